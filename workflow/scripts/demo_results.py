"""Rule demo_results: results/summary/demo_results.md, the measured results the README embeds."""

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.report import results_md

# params.deepest and input.units list the same (dataset, model, layer) in the same order.
units = [{**dict(item), "path": path} for item, path in zip(sm.params.deepest, list(sm.input.units), strict=True)]
training = list(getattr(sm.input, "training", []))
ablation = list(getattr(sm.input, "ablation", []))
inputs = results_md.DemoInputs(
    models_csv=sm.input.models,
    attacks_csv=sm.input.attacks,
    table2_csv=sm.input.table2,
    ceilings_csv=sm.input.ceilings,
    units=units,
    training_csv=training[0] if training else None,
    effects_csv=sm.input.effects,
    model_effects_csv=sm.input.model_effects,
    ablation_csv=ablation[0] if ablation else None,
)
results_md.write_demo_results(sm.output.md, inputs)
