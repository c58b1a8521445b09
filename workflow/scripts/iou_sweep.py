"""Rule iou_sweep: detector share against the IoU cut for one dataset/model/layer, table and figure."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect import figures, tables  # noqa: E402

figures.write_iou_sweep(
    tables.zip_entries(sm.params.entries, list(sm.input.units)),
    csv=sm.output.csv,
    png=sm.output.png,
    svg=sm.output.svg,
    iou_threshold=float(sm.params.iou_threshold),
    style=sm.params.style,
)
