"""Rule segmentations: decode the label masks of one dataset shard into one file."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.data.segmentations import write_segmentations
from advdissect.specs import ShardPlan

write_segmentations(
    snakemake.output.segmentations,
    dataset_root=Path(snakemake.input.dataset).parent,
    plan=ShardPlan(**snakemake.params.plan),
    shard=int(snakemake.wildcards.shard),
    identity=dict(snakemake.params.identity),
)
