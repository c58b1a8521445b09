"""Rule summary_attacks: results/summary/attacks.csv, every attack_stats.csv in one table."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import tables

tables.write_attacks_table(list(sm.input.stats), sm.output.table)
