"""Rule thresholds: exact per-unit activation thresholds of a layer from all its shards."""

import logging
import sys

log_file = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

from advdissect.thresholds import write_thresholds  # noqa: E402

write_thresholds(
    snakemake.output.thresholds,  # noqa: F821
    list(snakemake.input.shards),  # noqa: F821
    float(snakemake.params.quantile),  # noqa: F821
    dict(snakemake.params.identity),  # noqa: F821
)
