"""Rule thresholds: exact per-unit activation thresholds of a layer from all its shards."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.dissect.thresholds import write_thresholds

write_thresholds(
    snakemake.output.thresholds,
    list(snakemake.input.shards),
    float(snakemake.params.quantile),
    dict(snakemake.params.identity),
)
