"""Rule make_synthetic: write the synthetic Broden-format dataset whose index.csv is the output."""

from pathlib import Path

from advdissect.joblog import log_to
from advdissect.synthetic import generate

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

params = dict(snakemake.params.synthetic)  # noqa: F821
generate(
    Path(snakemake.output.index).parent,  # noqa: F821
    n_train=params["n_train"],
    n_val=params["n_val"],
    image_size=params.get("image_size", 112),
    n_classes=params.get("n_classes", 16),
    seed=params.get("seed", 0),
)
