"""Rule summary_attacks: results/summary/attacks.csv, every attack_stats.csv in one table."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect.report import tables  # noqa: E402

tables.write_attacks_table(list(sm.input.stats), sm.output.table)
