# Adversarial (and clean) image shards, and per-attack statistics.


rule attack_shard:
    input:
        unpack(weights_input),
        dataset=lambda wc: dataset_index(wc.dataset),
    output:
        images=stored("images", "results/{dataset}/{model}/{attack}/images/{shard}.h5"),
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
        model_spec=lambda wc: model_spec(wc.model),
        attack=lambda wc: ATTACK_SPECS[wc.attack].to_dict(),
        rows=lambda wc: shard_rows(wc.dataset),
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
        },
    script:
        "../scripts/attack_shard.py"


rule attack_stats:
    input:
        shards=lambda wc: expand(
            "results/{{dataset}}/{{model}}/{{attack}}/images/{shard}.h5",
            shard=shards(wc.dataset),
        ),
    output:
        stats="results/{dataset}/{model}/{attack}/attack_stats.csv",
    log:
        "results/logs/attack_stats/{dataset}/{model}/{attack}.log",
    benchmark:
        "results/benchmarks/attack_stats/{dataset}/{model}/{attack}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        identity=lambda wc: {
            "dataset": wc.dataset,
            "model": wc.model,
            "attack": wc.attack,
        },
        attack=lambda wc: ATTACK_SPECS[wc.attack].to_dict(),
    script:
        "../scripts/attack_stats.py"
