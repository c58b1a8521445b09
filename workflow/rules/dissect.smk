# Network Dissection: activations (every layer of a model from one forward pass per shard)
# -> exact thresholds per layer -> IoU counts (every layer and threshold mode of a shard in one
# job) -> IoU, tally.csv and units table per layer and mode.


rule activations:
    input:
        unpack(job(PLAN.weights_input)),
        images=path("images"),
    output:
        activations=stored("activations", path("activations")),
    log:
        "results/logs/activations/{dataset}/{model}/{attack}/{shard}.log",
    benchmark:
        "results/benchmarks/activations/{dataset}/{model}/{attack}/{shard}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    threads: COMPUTE["threads"]
    resources:
        gpu=1,
    params:
        model_spec=job(PLAN.model_spec),
        layers=job(PLAN.layers),
        identity=identity("dataset", "model", "attack", "shard"),
        dtype=DISSECTION["activation_dtype"],
    script:
        "../scripts/activations.py"


rule thresholds:
    input:
        shards=per_shard("activations"),
    output:
        thresholds=path("thresholds"),
    log:
        "results/logs/thresholds/{dataset}/{model}/{attack}/{layer}.log",
    benchmark:
        "results/benchmarks/thresholds/{dataset}/{model}/{attack}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        quantile=DISSECTION["quantile"],
        identity=identity("dataset", "model", "attack", "layer"),
    script:
        "../scripts/thresholds.py"


rule count_shard:
    input:
        activations=path("activations"),
        thresholds=job(PLAN.shard_thresholds),
        segmentations=path("segmentations"),
    output:
        counts=path("counts"),
    log:
        "results/logs/count_shard/{dataset}/{model}/{attack}/{shard}.log",
    benchmark:
        "results/benchmarks/count_shard/{dataset}/{model}/{attack}/{shard}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        identity=identity("dataset", "model", "attack", "shard"),
        dissections=job(PLAN.shard_dissections),
        per_image=BOOTSTRAP["resamples"] > 0,
    script:
        "../scripts/count_shard.py"


rule merge_counts:
    input:
        counts=per_shard("counts"),
        dataset=job(PLAN.dataset_index),
    output:
        iou=path("iou"),
        tally=path("tally"),
        units=path("units"),
    log:
        "results/logs/merge_counts/{dataset}/{model}/{attack}/{mode}/{layer}.log",
    benchmark:
        "results/benchmarks/merge_counts/{dataset}/{model}/{attack}/{mode}/{layer}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        denominator=DISSECTION["denominator"],
        iou_threshold=DISSECTION["iou_threshold"],
        identity=identity("dataset", "model", "attack", "mode", "layer"),
    script:
        "../scripts/merge_counts.py"


rule bootstrap:
    input:
        counts=per_shard("counts"),
    output:
        table=path("bootstrap"),
    log:
        "results/logs/bootstrap/{dataset}/{model}/{attack}.log",
    benchmark:
        "results/benchmarks/bootstrap/{dataset}/{model}/{attack}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        resamples=BOOTSTRAP["resamples"],
        seed=BOOTSTRAP["seed"],
        denominator=DISSECTION["denominator"],
        iou_threshold=DISSECTION["iou_threshold"],
        identity=identity("dataset", "model", "attack"),
        dissections=job(PLAN.shard_dissections),
    script:
        "../scripts/bootstrap.py"
