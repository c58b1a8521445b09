"""Rule unit_pictures: top-activating images with unit masks, clean vs each attack (Fig. 8)."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report.top_images import ImageSet
from advdissect.report.unit_pictures import PictureInputs, PictureSpec, unit_pictures


def image_set(attack):
    return ImageSet(
        dataset=sm.wildcards.dataset,
        model=sm.wildcards.model,
        layer=sm.wildcards.layer,
        attack=attack,
        images=tuple(sm.input[f"images_{attack}"]),
        activations=tuple(sm.input[f"activations_{attack}"]),
        thresholds=sm.input[f"thresholds_{attack}"],
    )


clean = sm.params.clean_attack
attacks = list(sm.params.attacks)
inputs = PictureInputs(
    clean=image_set(clean),
    attacked=tuple(image_set(attack) for attack in attacks),
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
