"""Rule table2: results/summary/table2.csv, table2.md, attack_effects.csv and model_effects.csv from every
units/{layer}.csv (and the bootstrap tables)."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import dissections, tables

entries = dissections.zip_entries(sm.params.entries, list(sm.input.units))
if sm.input.bootstrap:
    entries = dissections.zip_entries(entries, list(sm.input.bootstrap), key="bootstrap", what="bootstrap")
tables.write_table2(
    entries,
    csv_path=sm.output.csv,
    md_path=sm.output.md,
    effects_path=sm.output.effects,
    level=float(sm.params.level),
    model_effects_path=sm.output.model_effects,
    baselines=dict(sm.params.baselines),
)
