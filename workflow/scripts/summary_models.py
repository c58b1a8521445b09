"""Rule summary_models: results/summary/models.csv from the model config and training metrics."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import tables

tables.write_models_table(
    models=sm.params.models,
    trained=list(sm.params.trained),
    metrics_paths=list(getattr(sm.input, "metrics", [])),
    out=sm.output.table,
)
