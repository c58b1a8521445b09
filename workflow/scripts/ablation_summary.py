"""Rule ablation_summary: results/summary/ablation.csv and its figure from every ablation table."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import figures

figures.write_ablation_summary(list(sm.input.tables), sm.output.csv, sm.output.png, sm.output.svg, sm.params.style)
