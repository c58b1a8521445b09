"""Rule merge_counts: sum a layer's shard counts into its IoU table, tally.csv and units table."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.dissect.tally import write_iou, write_units_table

write_iou(
    snakemake.output.iou,
    snakemake.output.tally,
    count_paths=list(snakemake.input.counts),
    dataset_root=Path(snakemake.input.dataset).parent,
    denominator=snakemake.params.denominator,
    identity=dict(snakemake.params.identity),
)
write_units_table(
    snakemake.output.units,
    snakemake.output.iou,
    float(snakemake.params.iou_threshold),
)
