"""Rule download_weights: torchvision's pretrained weights for one architecture, as a weights file."""

import contextlib
import logging

from advdissect.models import download_torchvision_weights

snakemake = globals()["snakemake"]  # injected by Snakemake's `script:` directive

with open(snakemake.log[0], "w") as log_file, contextlib.redirect_stderr(log_file):
    logging.basicConfig(
        stream=log_file,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    try:
        download_torchvision_weights(
            snakemake.params.arch, snakemake.params.weights, snakemake.output.weights
        )
    except Exception:
        logging.exception("downloading %s weights %s failed", snakemake.params.arch, snakemake.params.weights)
        raise
