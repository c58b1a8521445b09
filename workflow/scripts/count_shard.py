"""Rule count_shard: IoU counts of one activation shard against its segmentations."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.tally import write_count_shard  # noqa: E402

identity = dict(snakemake.params.identity)  # noqa: F821
# The activation shard carries dataset/model/attack/shard/layer, not the threshold mode.
expect_activations = {key: identity[key] for key in ("dataset", "model", "attack", "layer", "shard")}
write_count_shard(
    snakemake.output.counts,  # noqa: F821
    activations_path=snakemake.input.activations,  # noqa: F821
    thresholds_path=snakemake.input.thresholds,  # noqa: F821
    dataset_root=Path(snakemake.input.dataset).parent,  # noqa: F821
    identity=identity,
    expect_activations=expect_activations,
    expect_thresholds=dict(snakemake.params.threshold_identity),  # noqa: F821
)
