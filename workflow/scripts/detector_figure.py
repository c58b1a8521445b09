"""Rule detector_figure: detector units per concept for one dataset/model/layer (Fig. 5-7)."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect import figures, tables  # noqa: E402

figures.detector_figure(
    tables.zip_entries(sm.params.entries, list(sm.input.units)),
    png=sm.output.png,
    svg=sm.output.svg,
    style=sm.params.style,
    top_n=sm.params.top_n,
)
