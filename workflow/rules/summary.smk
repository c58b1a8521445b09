# Summaries, figures and the report: everything after the IoU tables.


rule summary_models:
    input:
        metrics=[f"results/models/{m}/metrics.json" for m in PLAN.trained_models()],
    output:
        table=report(
            "results/summary/models.csv",
            caption="../report/models.rst",
            category="Models",
        ),
    log:
        "results/logs/summary_models.log",
    benchmark:
        "results/benchmarks/summary_models.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        models=MODELS,
        trained=PLAN.trained_models(),
    script:
        "../scripts/summary_models.py"


rule summary_attacks:
    input:
        stats=[
            path("attack_stats", dataset=d, model=m, attack=a)
            for d, m, a in PLAN.chains()
        ],
    output:
        table=report(
            "results/summary/attacks.csv",
            caption="../report/attacks.rst",
            category="Attacks",
        ),
    log:
        "results/logs/summary_attacks.log",
    benchmark:
        "results/benchmarks/summary_attacks.tsv"
    conda:
        "../../envs/advdissect.yaml"
    script:
        "../scripts/summary_attacks.py"


rule table2:
    input:
        units=PLAN.units_paths(PLAN.dissections()),
        bootstrap=PLAN.bootstrap_paths(PLAN.dissections()),
    output:
        csv=report(
            "results/summary/table2.csv",
            caption="../report/table2.rst",
            category="Table 2",
        ),
        md="results/summary/table2.md",
        effects=report(
            "results/summary/attack_effects.csv",
            caption="../report/attack_effects.rst",
            category="Table 2",
        ),
        model_effects=report(
            "results/summary/model_effects.csv",
            caption="../report/model_effects.rst",
            category="Table 2",
        ),
    log:
        "results/logs/table2.log",
    benchmark:
        "results/benchmarks/table2.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        entries=PLAN.dissection_rows(),
        level=BOOTSTRAP["level"],
        baselines=PLAN.model_baselines(),
    script:
        "../scripts/table2.py"


rule ablation:
    input:
        unpack(job(PLAN.weights_input)),
        images=per_shard("images"),
        clean_activations=per_shard("activations", attack=CLEAN),
        units=job(PLAN.ablation_units),
    output:
        table=path("ablation"),
    log:
        "results/logs/ablation/{dataset}/{model}/{attack}/{layer}.log",
    benchmark:
        "results/benchmarks/ablation/{dataset}/{model}/{attack}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    threads: COMPUTE["threads"]
    resources:
        gpu=1,
    params:
        model_spec=job(PLAN.model_spec),
        modes=DISSECTION["threshold_modes"],
        random_sets=ABLATION["random_sets"],
        clean=CLEAN,
        identity=identity("dataset", "model", "attack", "layer"),
    script:
        "../scripts/ablation.py"


rule ablation_summary:
    input:
        tables=PLAN.ablation_paths(),
    output:
        csv=report(
            "results/summary/ablation.csv",
            caption="../report/ablation.rst",
            category="Ablation",
        ),
        png=report(
            "results/figures/ablation.png",
            caption="../report/ablation.rst",
            category="Ablation",
        ),
        svg="results/figures/ablation.svg",
    log:
        "results/logs/ablation_summary.log",
    benchmark:
        "results/benchmarks/ablation_summary.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        style=STYLE,
    script:
        "../scripts/ablation_summary.py"


rule concept_drift:
    input:
        units=PLAN.units_paths(PLAN.dissections()),
    output:
        units="results/summary/concept_drift.csv",
        summary=report(
            "results/summary/concept_drift_summary.csv",
            caption="../report/drift.rst",
            category="Concept drift",
        ),
        png=report(
            "results/figures/concept_drift.png",
            caption="../report/drift.rst",
            category="Concept drift",
        ),
        svg="results/figures/concept_drift.svg",
    log:
        "results/logs/concept_drift.log",
    benchmark:
        "results/benchmarks/concept_drift.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        entries=PLAN.dissection_rows(),
        style=STYLE,
    script:
        "../scripts/concept_drift.py"


# The figures of one dataset, model and layer drawn from its units tables, in one job.
rule layer_figures:
    input:
        units=layer_units,
    output:
        detectors_png=report(
            "results/figures/detectors/{dataset}/{model}/{layer}.png",
            caption="../report/detectors.rst",
            category="Detectors",
            subcategory="{model}",
        ),
        detectors_svg="results/figures/detectors/{dataset}/{model}/{layer}.svg",
        sweep_csv="results/summary/iou_sweep/{dataset}/{model}/{layer}.csv",
        sweep_png=report(
            "results/figures/iou_sweep/{dataset}/{model}/{layer}.png",
            caption="../report/iou_sweep.rst",
            category="IoU-cut sweep",
            subcategory="{model}",
        ),
        sweep_svg="results/figures/iou_sweep/{dataset}/{model}/{layer}.svg",
    log:
        "results/logs/layer_figures/{dataset}/{model}/{layer}.log",
    benchmark:
        "results/benchmarks/layer_figures/{dataset}/{model}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        entries=job(PLAN.dissection_rows),
        top_n=40,
        iou_threshold=DISSECTION["iou_threshold"],
        style=STYLE,
    script:
        "../scripts/layer_figures.py"


# One job for every layer's ε sweep: each reads the same two study-wide tables.
rule eps_sweep:
    input:
        table2="results/summary/table2.csv",
        attacks="results/summary/attacks.csv",
    output:
        png=[
            report(
                f"results/figures/eps_sweep/{d}/{m}/{layer}.png",
                caption="../report/eps_sweep.rst",
                category="Epsilon sweep",
                subcategory=m,
            )
            for d, m, layer in PLAN.figure_layers()
        ],
        svg=[
            f"results/figures/eps_sweep/{d}/{m}/{layer}.svg"
            for d, m, layer in PLAN.figure_layers()
        ],
    log:
        "results/logs/eps_sweep.log",
    benchmark:
        "results/benchmarks/eps_sweep.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        layers=PLAN.figure_layers(),
        style=STYLE,
    script:
        "../scripts/eps_sweep.py"


# Fig. 8 of one layer: one picture per attack, clean images against that attack's.
rule unit_pictures:
    input:
        unpack(job(PLAN.unit_picture_inputs)),
    output:
        pictures=report(
            directory("results/figures/units/{dataset}/{model}/{layer}"),
            patterns=["{attack}.png"],
            caption="../report/units.rst",
            category="Unit pictures",
            subcategory="{model}",
        ),
    log:
        "results/logs/unit_pictures/{dataset}/{model}/{layer}.log",
    benchmark:
        "results/benchmarks/unit_pictures/{dataset}/{model}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        attacks=job(PLAN.attacked_sets),
        clean_attack=CLEAN,
        threshold_mode="self",
        units=job(PLAN.pictured_units),
        k=FIGURES["top_units"],
        n_images=FIGURES["top_images"],
        style=STYLE,
    script:
        "../scripts/unit_pictures.py"


rule unit_browser:
    input:
        unpack(job(PLAN.browser_inputs)),
    output:
        page=report(
            directory("results/browser/{dataset}/{model}/{layer}"),
            htmlindex="index.html",
            caption="../report/browser.rst",
            category="Unit browser",
            subcategory="{model}",
        ),
    log:
        "results/logs/unit_browser/{dataset}/{model}/{layer}.log",
    benchmark:
        "results/benchmarks/unit_browser/{dataset}/{model}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        sets=job(PLAN.model_attacks),
        modes=DISSECTION["threshold_modes"],
        clean=CLEAN,
    script:
        "../scripts/unit_browser.py"


rule training_summary:
    input:
        models="results/summary/models.csv",
        attacks="results/summary/attacks.csv",
        table2="results/summary/table2.csv",
        histories=[f"results/models/{m}/history.csv" for m in PLAN.compared_models()],
    output:
        table=report(
            "results/summary/training.csv",
            caption="../report/training.rst",
            category="Training",
        ),
        png=report(
            "results/figures/training.png",
            caption="../report/training.rst",
            category="Training",
        ),
        svg="results/figures/training.svg",
        curves_png=report(
            "results/figures/learning_curves.png",
            caption="../report/learning_curves.rst",
            category="Training",
        ),
        curves_svg="results/figures/learning_curves.svg",
    log:
        "results/logs/training_summary.log",
    benchmark:
        "results/benchmarks/training_summary.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        training_models=PLAN.compared_models(),
        style=STYLE,
    script:
        "../scripts/training_summary.py"


# The ideal units of one dataset, at every map size its dissected layers have.
rule ceilings:
    input:
        segmentations=per_shard("segmentations"),
        index=job(PLAN.dataset_index),
    output:
        table=path("ceilings"),
    log:
        "results/logs/ceilings/{dataset}.log",
    benchmark:
        "results/benchmarks/ceilings/{dataset}.tsv"
    wildcard_constraints:
        dataset="|".join(PLAN.ceiling_datasets()),
    conda:
        "../../envs/advdissect.yaml"
    params:
        split=lambda wc: PLAN.shard_plan(wc.dataset).split,
        n_images=lambda wc: PLAN.shard_plan(wc.dataset).n_images,
        layers=job(PLAN.ceiling_layers),
        quantile=DISSECTION["quantile"],
        denominator=DISSECTION["denominator"],
    script:
        "../scripts/ceilings.py"


rule summary_ceilings:
    input:
        tables=[path("ceilings", dataset=d) for d in PLAN.ceiling_datasets()],
    output:
        table=report(
            "results/summary/ceilings.csv",
            caption="../report/ceilings.rst",
            category="Ceilings",
        ),
    log:
        "results/logs/summary_ceilings.log",
    benchmark:
        "results/benchmarks/summary_ceilings.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        layers=PLAN.ceiling_layers(),
    script:
        "../scripts/summary_ceilings.py"


rule demo_results:
    input:
        models="results/summary/models.csv",
        attacks="results/summary/attacks.csv",
        table2="results/summary/table2.csv",
        effects="results/summary/attack_effects.csv",
        model_effects="results/summary/model_effects.csv",
        ceilings="results/summary/ceilings.csv",
        training=["results/summary/training.csv"] if PLAN.compared_models() else [],
        ablation=["results/summary/ablation.csv"] if PLAN.ablation_paths() else [],
        units=[
            path("units", **e, attack=CLEAN, mode="self")
            for e in PLAN.deepest_layers()
        ],
    output:
        md=report(
            "results/summary/demo_results.md",
            caption="../report/demo_results.rst",
            category="Summary",
        ),
    log:
        "results/logs/demo_results.log",
    benchmark:
        "results/benchmarks/demo_results.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        deepest=PLAN.deepest_layers(),
    script:
        "../scripts/demo_results.py"
