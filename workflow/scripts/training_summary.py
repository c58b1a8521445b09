"""Rule training_summary: training.csv, the training-method figure and the learning curves."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report.training_figures import TrainingInputs, TrainingOutputs, write_training_summary

inputs = TrainingInputs(
    models_csv=sm.input.models,
    attacks_csv=sm.input.attacks,
    table2_csv=sm.input.table2,
    histories=tuple(getattr(sm.input, "histories", [])),
)
outputs = TrainingOutputs(
    table=sm.output.table,
    png=sm.output.png,
    svg=sm.output.svg,
    curves_png=sm.output.curves_png,
    curves_svg=sm.output.curves_svg,
)
write_training_summary(inputs, sm.params.training_models, outputs, style=sm.params.style)
