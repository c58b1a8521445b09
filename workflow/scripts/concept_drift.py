"""Rule concept_drift: per-unit concept changes under each attack, their counts and a figure."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import dissections, figures

figures.write_concept_drift(
    dissections.zip_entries(sm.params.entries, list(sm.input.units)),
    units_csv=sm.output.units,
    summary_csv=sm.output.summary,
    png=sm.output.png,
    svg=sm.output.svg,
    style=sm.params.style,
)
