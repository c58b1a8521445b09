"""Rule download_broden: fetch the real Broden dataset whose index.csv is the output."""

import logging
import sys
from pathlib import Path

from advdissect.download import download_broden

log_file = open(snakemake.log[0], "w")  # noqa: F821
sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

download_broden(snakemake.params.variant, Path(snakemake.output.index).parent)  # noqa: F821
