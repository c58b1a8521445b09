"""Rule summary_models: results/summary/models.csv from the model config and training metrics."""

import logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=sm.log[0], level=logging.INFO, force=True,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.captureWarnings(True)

from advdissect import tables  # noqa: E402

tables.write_models_table(
    models=sm.params.models,
    trained=list(sm.params.trained),
    metrics_paths=list(getattr(sm.input, "metrics", [])),
    out=sm.output.table,
)
