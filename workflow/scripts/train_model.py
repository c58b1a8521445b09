"""Rule train_model: train one model on a dataset's train split; weights, metrics and history."""

import contextlib
import logging
from pathlib import Path

from advdissect.device import claim_gpu, configure_threads, select_device
from advdissect.training import train_model_to_files

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive

with open(snakemake.log[0], "w") as log_file, contextlib.redirect_stderr(log_file):
    logging.basicConfig(
        stream=log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    try:
        configure_threads(snakemake.threads)
        with claim_gpu(snakemake.params.gpus, lock_dir=".snakemake/gpu-locks"):
            train_model_to_files(
                dataset_root=Path(snakemake.input.dataset).parent,
                init_weights=snakemake.input.get("init"),
                model_spec=dict(snakemake.params.model_spec),
                training=dict(snakemake.params.training),
                out_weights=snakemake.output.weights,
                out_metrics=snakemake.output.metrics,
                out_history=snakemake.output.history,
                checkpoint_path=snakemake.params.checkpoint,
                device=select_device(),
            )
    except Exception:
        logging.exception("training %s failed", snakemake.output.weights)
        raise
