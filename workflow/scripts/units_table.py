"""Rule units_table: one row per unit (best concept, IoU, detector at the configured cut)."""

import logging
import sys

log_file = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

from advdissect.tally import write_units_table  # noqa: E402

write_units_table(
    snakemake.output.units,  # noqa: F821
    snakemake.input.iou,  # noqa: F821
    float(snakemake.params.iou_threshold),  # noqa: F821
)
