"""Rule table2: results/summary/table2.csv and table2.md from every units/{layer}.csv."""

import logging

sm = snakemake  # noqa: F821 (injected by Snakemake)
logging.basicConfig(filename=sm.log[0], level=logging.INFO, force=True,
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.captureWarnings(True)

from advdissect import tables  # noqa: E402

tables.write_table2(
    tables.zip_entries(sm.params.entries, list(sm.input.units)),
    csv_path=sm.output.csv,
    md_path=sm.output.md,
)
