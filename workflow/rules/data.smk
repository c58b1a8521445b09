# Datasets: the synthetic Broden-format set, and the real Broden for users with a network.


rule make_synthetic:
    output:
        index="resources/synthetic/{dataset}/index.csv",
    log:
        "results/logs/make_synthetic/{dataset}.log",
    benchmark:
        "results/benchmarks/make_synthetic/{dataset}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        synthetic=lambda wc: DATASETS[wc.dataset]["synthetic"],
    script:
        "../scripts/make_synthetic.py"


# The label masks of a dataset shard, decoded once for the count and bootstrap jobs of every
# model and attack.
rule segmentations:
    input:
        dataset=job(PLAN.dataset_index),
    output:
        segmentations=path("segmentations"),
    log:
        "results/logs/segmentations/{dataset}/{shard}.log",
    benchmark:
        "results/benchmarks/segmentations/{dataset}/{shard}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        plan=lambda wc: PLAN.shard_plan(wc.dataset).to_dict(),
        identity=identity("dataset", "shard"),
    script:
        "../scripts/segmentations.py"


rule download_broden:
    output:
        index="resources/broden/{variant}/index.csv",
    log:
        "results/logs/download_broden/{variant}.log",
    benchmark:
        "results/benchmarks/download_broden/{variant}.tsv"
    wildcard_constraints:
        variant="broden1_224|broden1_227",
    conda:
        "../../envs/advdissect.yaml"
    params:
        variant="{variant}",
    script:
        "../scripts/download_broden.py"
