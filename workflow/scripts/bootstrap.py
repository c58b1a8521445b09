"""Rule bootstrap: detector counts of every dissection of an image set on resamples of its images."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.dissect.bootstrap import write_bootstrap

write_bootstrap(
    sm.output.table,
    count_paths=list(sm.input.counts),
    identity=dict(sm.params.identity),
    dissections=[{"mode": d["mode"], "layer": d["layer"]} for d in sm.params.dissections],
    resamples=int(sm.params.resamples),
    seed=int(sm.params.seed),
    denominator=sm.params.denominator,
    iou_threshold=float(sm.params.iou_threshold),
)
