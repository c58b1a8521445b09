# Model weights: torchvision's published weights, a file at a URL, or trained here (standard,
# at, consistency, atda).


rule download_weights:
    output:
        weights="resources/weights/{arch}-{weights}.pt",
    log:
        "results/logs/download_weights/{arch}-{weights}.log",
    benchmark:
        "results/benchmarks/download_weights/{arch}-{weights}.tsv"
    wildcard_constraints:
        arch=r"[a-z0-9_]+",
        weights=r"[A-Z0-9_]+",
    conda:
        "../../envs/advdissect.yaml"
    params:
        arch="{arch}",
        weights="{weights}",
    script:
        "../scripts/download_weights.py"


# The weights source url: one download per model, resumed where a transfer was cut, checked
# against the pinned or recorded sha256 and loaded into the model (on the CPU) before it is kept.
rule download_url_weights:
    output:
        weights="resources/weights/url/{model}.pt",
    log:
        "results/logs/download_url_weights/{model}.log",
    benchmark:
        "results/benchmarks/download_url_weights/{model}.tsv"
    conda:
        "../../envs/advdissect.yaml"
    params:
        url=lambda wc: MODELS[wc.model]["weights"]["url"],
    script:
        "../scripts/download_url_weights.py"


rule train_model:
    input:
        unpack(job(PLAN.train_inputs)),
    output:
        weights="results/models/{model}/weights.pt",
        metrics="results/models/{model}/metrics.json",
        history="results/models/{model}/history.csv",
    log:
        "results/logs/train_model/{model}.log",
    benchmark:
        "results/benchmarks/train_model/{model}.tsv"
    # Training is the longest chain of the study: it starts before any job that can wait.
    priority: 10
    conda:
        "../../envs/advdissect.yaml"
    threads: COMPUTE["threads"]
    resources:
        gpu=1,
    params:
        model_spec=job(PLAN.model_spec),
        training=job(PLAN.training_params),
        # The checkpoint lives outside the outputs so a killed training resumes from it.
        checkpoint="results/models/{model}/checkpoint.pt",
        dataset_source=job(PLAN.training_source),
        # The init model's pinned sha256 (None without one): the script checks the init weights.
        init_sha256=job(PLAN.init_sha256),
    script:
        "../scripts/train_model.py"
