"""Rule make_synthetic: write the synthetic Broden-format dataset whose index.csv is the output."""

import logging
import sys
from pathlib import Path

from advdissect.synthetic import generate

log_file = open(snakemake.log[0], "w")  # noqa: F821
sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

params = dict(snakemake.params.synthetic)  # noqa: F821
generate(
    Path(snakemake.output.index).parent,  # noqa: F821
    n_train=params["n_train"],
    n_val=params["n_val"],
    image_size=params.get("image_size", 112),
    n_scenes=params.get("n_scenes", 24),
    seed=params.get("seed", 0),
)
