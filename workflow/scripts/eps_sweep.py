"""Rule eps_sweep: detector ratio and prediction agreement against ε for one dataset/model/layer."""

import logging

import matplotlib

matplotlib.use("Agg")

sm = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=sm.log[0], level=logging.INFO, force=True,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.captureWarnings(True)

from advdissect import figures  # noqa: E402

figures.write_eps_sweep(
    sm.input.table2,
    sm.input.attacks,
    dataset=sm.wildcards.dataset,
    model=sm.wildcards.model,
    layer=sm.wildcards.layer,
    png=sm.output.png,
    svg=sm.output.svg,
    style=sm.params.style,
)
