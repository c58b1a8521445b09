# Network Dissection: activations -> exact thresholds -> IoU counts per shard -> IoU, tally.csv, units table.


rule activations:
    input:
        unpack(weights_input),
        images="results/{dataset}/{model}/{attack}/images/{shard}.h5",
    output:
        activations=stored(
            "activations",
            "results/{dataset}/{model}/{attack}/activations/{layer}/{shard}.h5",
        ),
    log:
        "results/logs/activations/{dataset}/{model}/{attack}/{layer}/{shard}.log",
    benchmark:
        "results/benchmarks/activations/{dataset}/{model}/{attack}/{layer}/{shard}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    threads: COMPUTE["threads"]
    resources:
        gpu=1,
    params:
        model_spec=lambda wc: model_spec(wc.model),
        layer="{layer}",
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
            "shard": int(wc.shard),
        },
        dtype=DISSECTION["activation_dtype"],
    script:
        "../scripts/activations.py"


rule thresholds:
    input:
        shards=lambda wc: expand(
            "results/{{dataset}}/{{model}}/{{attack}}/activations/{{layer}}/{shard}.h5",
            shard=shards(wc.dataset),
        ),
    output:
        thresholds="results/{dataset}/{model}/{attack}/thresholds/{layer}.h5",
    log:
        "results/logs/thresholds/{dataset}/{model}/{attack}/{layer}.log",
    benchmark:
        "results/benchmarks/thresholds/{dataset}/{model}/{attack}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        quantile=DISSECTION["quantile"],
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
            "layer": wc.layer,
        },
    script:
        "../scripts/thresholds.py"


rule count_shard:
    input:
        activations="results/{dataset}/{model}/{attack}/activations/{layer}/{shard}.h5",
        thresholds=lambda wc: f"results/{wc.dataset}/{wc.model}/{threshold_attack(wc.attack, wc.mode)}/thresholds/{wc.layer}.h5",
        dataset=lambda wc: dataset_index(wc.dataset),
    output:
        counts="results/{dataset}/{model}/{attack}/{mode}/counts/{layer}/{shard}.h5",
    log:
        "results/logs/count_shard/{dataset}/{model}/{attack}/{mode}/{layer}/{shard}.log",
    benchmark:
        "results/benchmarks/count_shard/{dataset}/{model}/{attack}/{mode}/{layer}/{shard}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
            "mode": wc.mode,
            "layer": wc.layer,
            "shard": int(wc.shard),
        },
        threshold_identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": threshold_attack(wc.attack, wc.mode),
            "layer": wc.layer,
        },
    script:
        "../scripts/count_shard.py"


rule merge_counts:
    input:
        counts=lambda wc: expand(
            "results/{{dataset}}/{{model}}/{{attack}}/{{mode}}/counts/{{layer}}/{shard}.h5",
            shard=shards(wc.dataset),
        ),
        dataset=lambda wc: dataset_index(wc.dataset),
    output:
        iou="results/{dataset}/{model}/{attack}/{mode}/iou/{layer}.h5",
        tally="results/{dataset}/{model}/{attack}/{mode}/tally/{layer}.csv",
        units="results/{dataset}/{model}/{attack}/{mode}/units/{layer}.csv",
    log:
        "results/logs/merge_counts/{dataset}/{model}/{attack}/{mode}/{layer}.log",
    benchmark:
        "results/benchmarks/merge_counts/{dataset}/{model}/{attack}/{mode}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        denominator=DISSECTION["denominator"],
        iou_threshold=DISSECTION["iou_threshold"],
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
            "mode": wc.mode,
            "layer": wc.layer,
        },
    script:
        "../scripts/merge_counts.py"


rule bootstrap:
    input:
        activations=lambda wc: expand(
            "results/{{dataset}}/{{model}}/{{attack}}/activations/{{layer}}/{shard}.h5",
            shard=shards(wc.dataset),
        ),
        thresholds=lambda wc: f"results/{wc.dataset}/{wc.model}/{threshold_attack(wc.attack, wc.mode)}/thresholds/{wc.layer}.h5",
        counts=lambda wc: expand(
            "results/{{dataset}}/{{model}}/{{attack}}/{{mode}}/counts/{{layer}}/{shard}.h5",
            shard=shards(wc.dataset),
        ),
        dataset=lambda wc: dataset_index(wc.dataset),
    output:
        table="results/{dataset}/{model}/{attack}/{mode}/bootstrap/{layer}.csv",
    log:
        "results/logs/bootstrap/{dataset}/{model}/{attack}/{mode}/{layer}.log",
    benchmark:
        "results/benchmarks/bootstrap/{dataset}/{model}/{attack}/{mode}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        resamples=BOOTSTRAP["resamples"],
        seed=BOOTSTRAP["seed"],
        denominator=DISSECTION["denominator"],
        iou_threshold=DISSECTION["iou_threshold"],
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
            "mode": wc.mode,
            "layer": wc.layer,
        },
        threshold_identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": threshold_attack(wc.attack, wc.mode),
            "layer": wc.layer,
        },
    script:
        "../scripts/bootstrap.py"
