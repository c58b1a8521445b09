"""Rule training_summary: training.csv, the training-method figure and the learning curves."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import figures

figures.write_training_summary(
    models_csv=sm.input.models,
    attacks_csv=sm.input.attacks,
    table2_csv=sm.input.table2,
    training_models=sm.params.training_models,
    histories=list(getattr(sm.input, "histories", [])),
    table=sm.output.table,
    png=sm.output.png,
    svg=sm.output.svg,
    curves_png=sm.output.curves_png,
    curves_svg=sm.output.curves_svg,
    style=sm.params.style,
)
