"""Rule attack_stats: one-row CSV summarising an attack over its image shards."""

import logging
import sys

log_file = open(snakemake.log[0], "w")  # noqa: F821 (snakemake is injected)
sys.stdout = sys.stderr = log_file
logging.basicConfig(stream=log_file, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

from advdissect.attacks import write_attack_statistics  # noqa: E402

identity = dict(snakemake.params.identity)  # noqa: F821
# Shards must have been made with the attack settings this rule was given.
identity["attack_params"] = dict(snakemake.params.attack)  # noqa: F821
write_attack_statistics(snakemake.output.stats, list(snakemake.input.shards), identity)  # noqa: F821
