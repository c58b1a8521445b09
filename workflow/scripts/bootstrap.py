"""Rule bootstrap: detector counts of a dissected layer on resamples of its images."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect.bootstrap import write_bootstrap  # noqa: E402

write_bootstrap(
    sm.output.table,
    activation_paths=list(sm.input.activations),
    thresholds_path=sm.input.thresholds,
    count_paths=list(sm.input.counts),
    segmentation_paths=list(sm.input.segmentations),
    identity=dict(sm.params.identity),
    threshold_identity=dict(sm.params.threshold_identity),
    resamples=int(sm.params.resamples),
    seed=int(sm.params.seed),
    denominator=sm.params.denominator,
    iou_threshold=float(sm.params.iou_threshold),
)
