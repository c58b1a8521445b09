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
