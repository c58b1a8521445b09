"""Rule activations: the feature maps of every dissected layer for one images shard."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.nets.device import claim_gpu  # noqa: E402

# The GPU is claimed before anything touches CUDA, so the claim decides which device is seen.
# Device ids and batch size come from the config, not params: no result depends on them, so
# changing either re-runs nothing.
with claim_gpu(snakemake.config["compute"]["gpus"], lock_dir=".snakemake/gpu-locks"):  # noqa: F821
    from advdissect.dissect.activations import write_activation_shard
    from advdissect.nets.device import configure_cpu, select_device
    from advdissect.specs import ModelSpec

    configure_cpu(snakemake.threads)  # noqa: F821
    write_activation_shard(
        snakemake.output.activations,  # noqa: F821
        images_path=snakemake.input.images,  # noqa: F821
        weights_file=snakemake.input.get("weights"),  # noqa: F821
        model_spec=ModelSpec(**snakemake.params.model_spec),  # noqa: F821
        layers=list(snakemake.params.layers),  # noqa: F821
        identity=dict(snakemake.params.identity),  # noqa: F821
        batch_size=int(snakemake.config["dissection"]["batch_size"]),  # noqa: F821
        dtype=snakemake.params.dtype,  # noqa: F821
        device=select_device(),
    )
