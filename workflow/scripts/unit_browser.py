"""Rule unit_browser: the HTML page of one model and layer with every unit, clean next to each attack."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report.browser import write_browser
from advdissect.report.top_images import ImageSet

sets = [ImageSet.from_named(sm.input, sm.wildcards, attack) for attack in sm.params.sets]
units = {
    (attack, mode): sm.input[f"units_{attack}_{mode}"]
    for attack in sm.params.sets
    for mode in (["self"] if attack == sm.params.clean else sm.params.modes)
}
write_browser(sm.output.page, sets, units, clean_attack=sm.params.clean)
