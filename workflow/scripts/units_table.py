"""Rule units_table: one row per unit (best concept, IoU, detector at the configured cut)."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.tally import write_units_table  # noqa: E402

write_units_table(
    snakemake.output.units,  # noqa: F821
    snakemake.input.iou,  # noqa: F821
    float(snakemake.params.iou_threshold),  # noqa: F821
)
