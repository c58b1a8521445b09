"""Rule table2: results/summary/table2.csv and table2.md from every units/{layer}.csv."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect import tables  # noqa: E402

tables.write_table2(
    tables.zip_entries(sm.params.entries, list(sm.input.units)),
    csv_path=sm.output.csv,
    md_path=sm.output.md,
)
