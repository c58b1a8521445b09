"""Rule make_synthetic: write the synthetic Broden-format dataset whose index.csv is the output."""

from pathlib import Path

from advdissect.data import broden_shaped, synthetic
from advdissect.joblog import log_to

log_to(snakemake.log[0])

params = dict(snakemake.params.synthetic)
root = Path(snakemake.output.index).parent
if params.get("layout", "recognition") == "broden":
    broden_shaped.generate(root, n_train=params["n_train"], n_val=params["n_val"], seed=params.get("seed", 0))
else:
    synthetic.generate(
        root,
        n_train=params["n_train"],
        n_val=params["n_val"],
        image_size=params.get("image_size", 112),
        n_classes=params.get("n_classes", 16),
        seed=params.get("seed", 0),
    )
