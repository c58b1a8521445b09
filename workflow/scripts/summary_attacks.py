"""Rule summary_attacks: results/summary/attacks.csv, every attack_stats.csv in one table."""

import logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=sm.log[0], level=logging.INFO, force=True,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.captureWarnings(True)

from advdissect import tables  # noqa: E402

tables.write_attacks_table(list(sm.input.stats), sm.output.table)
