"""Rule attack_shard: attack one shard of a dataset and write its images shard."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.nets.device import gpu_job

# The GPU is claimed before anything touches CUDA, so the claim decides which device is seen.
# Device ids and batch size come from the config, not params: no result depends on them, so
# changing either re-runs nothing.
with gpu_job(snakemake.config["compute"]["gpus"], snakemake.threads) as device:
    from advdissect.nets.attack_shards import AttackShardJob, write_attack_shard
    from advdissect.specs import AttackSpec, ModelSpec, ShardPlan

    job = AttackShardJob(
        dataset_root=Path(snakemake.input.dataset).parent,
        plan=ShardPlan(**snakemake.params.plan),
        shard=int(snakemake.wildcards.shard),
        model_spec=ModelSpec(**snakemake.params.model_spec),
        weights_file=snakemake.input.get("weights"),
        attack=AttackSpec(**snakemake.params.attack),
        identity=dict(snakemake.params.identity),
        batch_size=int(snakemake.config["dissection"]["batch_size"]),
    )
    write_attack_shard(snakemake.output.images, job, device=device)
