"""Rule segmentations: decode the label masks of one dataset shard into one file."""

from pathlib import Path

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.data.segmentations import write_segmentations  # noqa: E402
from advdissect.specs import ShardPlan  # noqa: E402

write_segmentations(
    snakemake.output.segmentations,  # noqa: F821
    dataset_root=Path(snakemake.input.dataset).parent,  # noqa: F821
    plan=ShardPlan(**snakemake.params.plan),  # noqa: F821
    shard=int(snakemake.wildcards.shard),  # noqa: F821
    identity=dict(snakemake.params.identity),  # noqa: F821
)
