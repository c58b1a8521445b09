"""Rule count_shard: IoU counts of one activations shard, every layer and threshold mode."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.dissect.tally import write_shard_counts  # noqa: E402

write_shard_counts(
    snakemake.output.counts,  # noqa: F821
    activations_path=snakemake.input.activations,  # noqa: F821
    segmentations_path=snakemake.input.segmentations,  # noqa: F821
    dissections=list(snakemake.params.dissections),  # noqa: F821
    identity=dict(snakemake.params.identity),  # noqa: F821
    per_image=bool(snakemake.params.per_image),  # noqa: F821
)
