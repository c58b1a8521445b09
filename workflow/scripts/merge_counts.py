"""Rule merge_counts: sum a layer's shard counts into its IoU table and tally.csv."""

import logging
import sys
from pathlib import Path

log_file = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

from advdissect.tally import write_iou  # noqa: E402

write_iou(
    snakemake.output.iou,  # noqa: F821
    snakemake.output.tally,  # noqa: F821
    count_paths=list(snakemake.input.counts),  # noqa: F821
    dataset_root=Path(snakemake.input.dataset).parent,  # noqa: F821
    denominator=snakemake.params.denominator,  # noqa: F821
    identity=dict(snakemake.params.identity),  # noqa: F821
)
