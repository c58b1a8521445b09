"""Rule unit_pictures: top-activating images with unit masks, clean vs one attack (Fig. 8)."""

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect import figures  # noqa: E402

figures.unit_pictures(
    clean_images=list(sm.input.clean_images),
    adv_images=list(sm.input.adv_images),
    clean_activations=list(sm.input.clean_activations),
    adv_activations=list(sm.input.adv_activations),
    clean_thresholds=sm.input.clean_thresholds,
    adv_thresholds=sm.input.adv_thresholds,
    clean_units=sm.input.clean_units,
    adv_units=sm.input.adv_units,
    png=sm.output.png,
    dataset=sm.wildcards.dataset,
    model=sm.wildcards.model,
    layer=sm.wildcards.layer,
    attack=sm.wildcards.attack,
    clean_attack=sm.params.clean_attack,
    threshold_mode=sm.params.threshold_mode,
    units=list(sm.params.units),
    k=int(sm.params.k),
    n_images=int(sm.params.n_images),
    style=sm.params.style,
)
