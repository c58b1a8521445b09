"""Rule layer_figures: detector units per concept (Fig. 5-7) and the IoU-cut sweep of one layer."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import dissections, figures

entries = dissections.zip_entries(sm.params.entries, list(sm.input.units))
figures.detector_figure(
    entries,
    png=sm.output.detectors_png,
    svg=sm.output.detectors_svg,
    style=sm.params.style,
    top_n=sm.params.top_n,
)
figures.write_iou_sweep(
    entries,
    csv=sm.output.sweep_csv,
    png=sm.output.sweep_png,
    svg=sm.output.sweep_svg,
    iou_threshold=float(sm.params.iou_threshold),
    style=sm.params.style,
)
