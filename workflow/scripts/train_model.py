"""Rule train_model: train one model on a dataset's train split; weights, metrics and history."""

from pathlib import Path

from advdissect.joblog import log_to
from advdissect.nets.device import claim_gpu, configure_cpu, select_device
from advdissect.nets.models import check_sha256
from advdissect.nets.training import train_model_to_files
from advdissect.specs import ModelSpec, train_spec

sm = snakemake
log_to(sm.log[0])
configure_cpu(sm.threads)
training = dict(sm.params.training)
image_size = training.pop("image_size", None)  # an ImageFolder training set's image size
spec = train_spec(training, f"models.{sm.wildcards.model}.weights")
weights = sm.config["models"][sm.wildcards.model]["weights"]
source = sm.config["datasets"][weights["dataset"]]["source"]
if sm.input.get("init"):
    # Training reads its start weights without their model's spec: check that model's pin here.
    check_sha256(sm.input.init, sm.config["models"][weights["init"]]["weights"].get("sha256"))
# Device ids come from the config, not params: changing them re-runs nothing.
with claim_gpu(sm.config["compute"]["gpus"], lock_dir=".snakemake/gpu-locks"):
    train_model_to_files(
        dataset_root=Path(sm.input.dataset).parent,
        init_weights=sm.input.get("init"),
        model_spec=ModelSpec(**sm.params.model_spec),
        training=spec,
        out_weights=sm.output.weights,
        out_metrics=sm.output.metrics,
        out_history=sm.output.history,
        checkpoint_path=sm.params.checkpoint,
        device=select_device(),
        dataset_source=source,
        image_size=image_size,
    )
