"""Rule attack_stats: one-row CSV summarising an attack over its image shards."""

from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

from advdissect.nets.attack_stats import write_attack_statistics  # noqa: E402

identity = dict(snakemake.params.identity)  # noqa: F821
# Shards must have been made with the attack settings this rule was given.
identity["attack_params"] = dict(snakemake.params.attack)  # noqa: F821
write_attack_statistics(snakemake.output.stats, list(snakemake.input.shards), identity)  # noqa: F821
