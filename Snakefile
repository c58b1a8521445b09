# advdissect: Network Dissection of CNNs on clean and adversarial images.
#
#   images (clean/adversarial shards) -> activations -> thresholds -> IoU counts
#   -> IoU tables / tally.csv -> Table 2, figures, report
#
# Run `snakemake --cores all` (embedded synthetic default) or
# `snakemake --cores all --configfile config/paper.yaml` (the study's setup).

from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless the user names config files: `--configfile config/paper.yaml`
# then replaces it instead of being merged into it.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/attacks.smk"
include: "workflow/rules/dissect.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        PLAN.all_targets(),
