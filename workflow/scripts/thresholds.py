"""Rule thresholds: exact per-unit activation thresholds of a layer from all its shards."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.dissect.thresholds import write_thresholds  # noqa: E402

write_thresholds(
    snakemake.output.thresholds,  # noqa: F821
    list(snakemake.input.shards),  # noqa: F821
    float(snakemake.params.quantile),  # noqa: F821
    dict(snakemake.params.identity),  # noqa: F821
)
