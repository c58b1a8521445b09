"""Rule unit_browser: the HTML page of one model and layer with every unit, clean next to each attack."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report.browser import write_browser
from advdissect.report.top_images import ImageSet

sets = [
    ImageSet(
        dataset=sm.wildcards.dataset,
        model=sm.wildcards.model,
        layer=sm.wildcards.layer,
        attack=attack,
        images=tuple(sm.input[f"images_{attack}"]),
        activations=tuple(sm.input[f"activations_{attack}"]),
        thresholds=sm.input[f"thresholds_{attack}"],
    )
    for attack in sm.params.sets
]
units = {
    (attack, mode): sm.input[f"units_{attack}_{mode}"]
    for attack in sm.params.sets
    for mode in (["self"] if attack == sm.params.clean else sm.params.modes)
}
write_browser(sm.output.page, sets, units, clean_attack=sm.params.clean)
