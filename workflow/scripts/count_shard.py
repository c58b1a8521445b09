"""Rule count_shard: IoU counts of one activations shard, every layer and threshold mode."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.dissect.tally import write_shard_counts

write_shard_counts(
    snakemake.output.counts,
    activations_path=snakemake.input.activations,
    segmentations_path=snakemake.input.segmentations,
    dissections=list(snakemake.params.dissections),
    identity=dict(snakemake.params.identity),
    per_image=bool(snakemake.params.per_image),
)
