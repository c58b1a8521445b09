"""Rule summary_ceilings: results/summary/ceilings.csv, every dataset's ceilings in the order
of the dissected layers."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.dissect import ceilings

ceilings.merge_ceilings(sm.output.table, list(sm.input.tables), [dict(item) for item in sm.params.layers])
