"""Rule attack_shard: attack one shard of a dataset and write its images shard."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.nets.device import claim_gpu  # noqa: E402

# The GPU is claimed before anything touches CUDA, so the claim decides which device is seen.
# Device ids and batch size come from the config, not params: no result depends on them, so
# changing either re-runs nothing.
with claim_gpu(snakemake.config["compute"]["gpus"], lock_dir=".snakemake/gpu-locks"):  # noqa: F821
    from advdissect.nets.attacks import write_attack_shard
    from advdissect.nets.device import configure_cpu, select_device
    from advdissect.specs import AttackSpec, ModelSpec, ShardPlan

    configure_cpu(snakemake.threads)  # noqa: F821
    attack = AttackSpec(**snakemake.params.attack)  # noqa: F821
    identity = dict(snakemake.params.identity)  # noqa: F821
    write_attack_shard(
        snakemake.output.images,  # noqa: F821
        dataset_root=Path(snakemake.input.dataset).parent,  # noqa: F821
        plan=ShardPlan(**snakemake.params.plan),  # noqa: F821
        shard=int(snakemake.wildcards.shard),  # noqa: F821
        model_spec=ModelSpec(**snakemake.params.model_spec),  # noqa: F821
        weights_file=snakemake.input.get("weights"),  # noqa: F821
        attack=attack,
        identity=identity,
        batch_size=int(snakemake.config["dissection"]["batch_size"]),  # noqa: F821
        device=select_device(),
    )
