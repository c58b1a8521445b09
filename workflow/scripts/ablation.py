"""Rule ablation: mean-ablate the drifted units (and random sets) of one layer on one attack's images."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.nets.device import gpu_job

# The GPU is claimed before anything touches CUDA, so the claim decides which device is seen.
# Device ids and batch size come from the config, not params: no result depends on them, so
# changing either re-runs nothing.
with gpu_job(sm.config["compute"]["gpus"], sm.threads) as device:
    from advdissect.dissect.ablation import AblationJob, write_ablation
    from advdissect.specs import ModelSpec

    units = list(sm.input.units)  # per mode: clean units, attack units
    job = AblationJob(
        images_paths=list(sm.input.images),
        clean_activation_paths=list(sm.input.clean_activations),
        units_paths={mode: (units[2 * i], units[2 * i + 1]) for i, mode in enumerate(sm.params.modes)},
        weights_file=sm.input.get("weights"),
        model_spec=ModelSpec(**sm.params.model_spec),
        identity=dict(sm.params.identity),
        random_sets=int(sm.params.random_sets),
        batch_size=int(sm.config["dissection"]["batch_size"]),
        clean_attack=sm.params.clean,
    )
    write_ablation(sm.output.table, job, device=device)
