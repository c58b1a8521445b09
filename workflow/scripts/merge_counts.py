"""Rule merge_counts: sum a layer's shard counts into its IoU table, tally.csv and units table."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.dissect.tally import write_iou, write_units_table  # noqa: E402

write_iou(
    snakemake.output.iou,  # noqa: F821
    snakemake.output.tally,  # noqa: F821
    count_paths=list(snakemake.input.counts),  # noqa: F821
    dataset_root=Path(snakemake.input.dataset).parent,  # noqa: F821
    denominator=snakemake.params.denominator,  # noqa: F821
    identity=dict(snakemake.params.identity),  # noqa: F821
)
write_units_table(
    snakemake.output.units,  # noqa: F821
    snakemake.output.iou,  # noqa: F821
    float(snakemake.params.iou_threshold),  # noqa: F821
)
