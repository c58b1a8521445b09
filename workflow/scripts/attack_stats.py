"""Rule attack_stats: one-row CSV summarising an attack over its image shards."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])

from advdissect.nets.attack_stats import write_attack_statistics

identity = dict(snakemake.params.identity)
# Shards must have been made with the attack settings this rule was given.
identity["attack_params"] = dict(snakemake.params.attack)
write_attack_statistics(snakemake.output.stats, list(snakemake.input.shards), identity)
