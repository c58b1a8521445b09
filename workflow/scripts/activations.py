"""Rule activations: the feature maps of every dissected layer for one images shard."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.nets.device import gpu_job

# The GPU is claimed before anything touches CUDA, so the claim decides which device is seen.
# Device ids and batch size come from the config, not params: no result depends on them, so
# changing either re-runs nothing.
with gpu_job(snakemake.config["compute"]["gpus"], snakemake.threads) as device:
    from advdissect.dissect.activations import ActivationJob, write_activation_shard
    from advdissect.specs import ModelSpec

    job = ActivationJob(
        images_path=snakemake.input.images,
        weights_file=snakemake.input.get("weights"),
        model_spec=ModelSpec(**snakemake.params.model_spec),
        layers=list(snakemake.params.layers),
        identity=dict(snakemake.params.identity),
        batch_size=int(snakemake.config["dissection"]["batch_size"]),
        dtype=snakemake.params.dtype,
    )
    write_activation_shard(snakemake.output.activations, job, device=device)
