"""Rule train_model: train one model on a dataset's train split; weights, metrics and history."""

from pathlib import Path

from advdissect.joblog import log_to
from advdissect.nets.device import gpu_job
from advdissect.nets.training import TrainJob, train_model_to_files
from advdissect.nets.weights import check_sha256
from advdissect.specs import ModelSpec, train_spec

sm = snakemake
log_to(sm.log[0])
training = dict(sm.params.training)
image_size = training.pop("image_size", None)  # an ImageFolder training set's image size
if sm.input.get("init"):
    # Training reads its start weights without their model's spec: check that model's pin here.
    check_sha256(sm.input.init, sm.params.init_sha256)
job = TrainJob(
    dataset_root=Path(sm.input.dataset).parent,
    model_spec=ModelSpec(**sm.params.model_spec),
    training=train_spec(training, f"models.{sm.wildcards.model}.weights"),
    out_weights=sm.output.weights,
    out_metrics=sm.output.metrics,
    out_history=sm.output.history,
    checkpoint_path=sm.params.checkpoint,
    init_weights=sm.input.get("init"),
    dataset_source=sm.params.dataset_source,
    image_size=image_size,
)
# Nothing above starts CUDA, so the claim still decides which device is seen. Device ids come
# from the config, not params: changing them re-runs nothing.
with gpu_job(sm.config["compute"]["gpus"], sm.threads) as device:
    train_model_to_files(job, device=device)
