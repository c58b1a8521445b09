"""Rule unit_pictures: top-activating images with unit masks, clean vs each attack (Fig. 8)."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report.top_images import ImageSet
from advdissect.report.unit_pictures import PictureInputs, PictureSpec, unit_pictures

clean = sm.params.clean_attack
attacks = list(sm.params.attacks)
inputs = PictureInputs(
    clean=ImageSet.from_named(sm.input, sm.wildcards, clean),
    attacked=tuple(ImageSet.from_named(sm.input, sm.wildcards, attack) for attack in attacks),
    units={attack: sm.input[f"units_{attack}"] for attack in [clean, *attacks]},
)
spec = PictureSpec(
    threshold_mode=sm.params.threshold_mode,
    units=tuple(sm.params.units),
    k=int(sm.params.k),
    n_images=int(sm.params.n_images),
    style=sm.params.style,
)
unit_pictures(spec, inputs, sm.output.pictures)
