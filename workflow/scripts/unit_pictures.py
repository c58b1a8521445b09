"""Rule unit_pictures: top-activating images with unit masks, clean vs each attack (Fig. 8)."""

from pathlib import Path

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import figures

out = Path(sm.output.pictures)
out.mkdir(parents=True, exist_ok=True)
clean = sm.params.clean_attack
for attack in sm.params.attacks:
    figures.unit_pictures(
        clean_images=list(sm.input[f"images_{clean}"]),
        adv_images=list(sm.input[f"images_{attack}"]),
        clean_activations=list(sm.input[f"activations_{clean}"]),
        adv_activations=list(sm.input[f"activations_{attack}"]),
        clean_thresholds=sm.input[f"thresholds_{clean}"],
        adv_thresholds=sm.input[f"thresholds_{attack}"],
        clean_units=sm.input[f"units_{clean}"],
        adv_units=sm.input[f"units_{attack}"],
        png=out / f"{attack}.png",
        dataset=sm.wildcards.dataset,
        model=sm.wildcards.model,
        layer=sm.wildcards.layer,
        attack=attack,
        clean_attack=clean,
        threshold_mode=sm.params.threshold_mode,
        units=list(sm.params.units),
        k=int(sm.params.k),
        n_images=int(sm.params.n_images),
        style=sm.params.style,
    )
