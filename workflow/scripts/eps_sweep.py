"""Rule eps_sweep: detector ratio and prediction agreement against ε for one dataset/model/layer."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

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
