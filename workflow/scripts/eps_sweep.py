"""Rule eps_sweep: detector ratio and prediction agreement against ε, one figure per layer."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import eps_sweep

eps_sweep.write_eps_sweeps(
    sm.input.table2,
    sm.input.attacks,
    layers=[tuple(layer) for layer in sm.params.layers],
    pngs=list(sm.output.png),
    svgs=list(sm.output.svg),
    style=sm.params.style,
)
