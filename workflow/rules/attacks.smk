# Adversarial (and clean) image shards, and per-attack statistics.


rule attack_shard:
    input:
        unpack(job(PLAN.weights_input)),
        dataset=job(PLAN.dataset_index),
    output:
        images=stored("images", path("images")),
    log:
        "results/logs/attack_shard/{dataset}/{model}/{attack}/{shard}.log",
    benchmark:
        "results/benchmarks/attack_shard/{dataset}/{model}/{attack}/{shard}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    threads: COMPUTE["threads"]
    resources:
        gpu=1,
    params:
        model_spec=job(PLAN.model_spec),
        attack=job(PLAN.attack_settings),
        plan=lambda wc: PLAN.shard_plan(wc.dataset).to_dict(),
        identity=identity("dataset", "model", "attack"),
    script:
        "../scripts/attack_shard.py"


rule attack_stats:
    input:
        shards=per_shard("images"),
    output:
        stats=path("attack_stats"),
    log:
        "results/logs/attack_stats/{dataset}/{model}/{attack}.log",
    benchmark:
        "results/benchmarks/attack_stats/{dataset}/{model}/{attack}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        identity=identity("dataset", "model", "attack"),
        attack=job(PLAN.attack_settings),
    script:
        "../scripts/attack_stats.py"
