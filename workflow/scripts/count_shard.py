"""Rule count_shard: IoU counts of one activation shard against its segmentations."""

import logging
import sys
from pathlib import Path

log_file = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

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
