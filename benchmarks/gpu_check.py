"""GPU check: the tiny chain on the GPU against the CPU, and the GPU jobs' speed on the GPU.

    python benchmarks/gpu_check.py [--device cuda] [--size 224] [--batch 64] [--batches 8]

1. Agreement. A generated synthetic dataset (48 held-out images, 64 px) and a ResNet-18 with
   random weights run through the library's own steps on the CPU and on --device: the clean
   set, FGSM 2/255 and the ±2/255 noise control (run_attack), layer3 and layer4 activations of
   the CPU's images (so both devices see the same pixels), exact thresholds, IoU counts and best
   concepts. Printed and checked:
   - clean and noise images: byte-equal (the pixels involve no float arithmetic on the device);
   - FGSM images: the share of pixels that differ (float rounding can flip the sign of a
     near-zero gradient entry, moving that pixel by one ε step); at most 1 %;
   - activations: the largest difference relative to the layer's largest activation; at most 1e-3;
   - units: how many change their best concept or detector status; where the activations are
     bit-equal the counts must be equal too.
2. Speed (ResNet-18, --size px, batch --batch, random weights and random images): images per
   second of a bare forward pass, of extract_layers for layer3 + layer4 in one pass (the
   activation job's work), of a bare forward + backward pass, and of run_attack FGSM (the attack
   job's work: gradient with the clean prediction, uint8 images, adversarial prediction, so one
   forward + backward + forward); their ratios; the GPU time of full Broden (63,305 images) with
   clean + FGSM 8/255 and layer3 + layer4 from those rates; and training steps per second
   (ResNet-18, standard and ATDA) under `precision: float32` and `precision: bf16`.

The GPU runs as the workflow's GPU jobs do (`advdissect.nets.device.reproducible_cuda`: full float32,
no TF32, deterministic cuDNN kernels). Exit status 1 when a check fails. Runs in a few minutes
on one GPU; with --device cpu it checks the script itself.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advdissect.data.broden import BrodenDataset
from advdissect.data.download import BRODEN_IMAGES as BRODEN_SIZES
from advdissect.data.synthetic import generate
from advdissect.dissect.activations import extract_activations, extract_layers
from advdissect.dissect.counts import LabelTable, count_shard, iou
from advdissect.dissect.tally import best_concepts
from advdissect.dissect.thresholds import threshold_from_top, top_count, top_values
from advdissect.nets import training
from advdissect.nets.attack_runner import run_attack
from advdissect.nets.device import reproducible_cuda
from advdissect.nets.models import load_model
from advdissect.specs import TrainSpec, attack_spec

BRODEN_IMAGES = BRODEN_SIZES["broden1_224"]
LAYERS = ("layer3", "layer4")
FGSM_SHARE_MAX = 0.01
ACTIVATION_REL_MAX = 1e-3


def dissect_layer(acts: np.ndarray, dataset: BrodenDataset, rows: np.ndarray, quantile: float = 0.005):
    n_total = acts.shape[0] * acts.shape[2] * acts.shape[3]
    thresholds = threshold_from_top(top_values(acts, top_count(n_total, quantile)), n_total, quantile)
    segs = [dataset.load_segmentation(int(r)) for r in rows]
    counts = count_shard(acts, thresholds, segs, LabelTable.of(dataset))
    label, _, top = best_concepts(iou(counts, "lite"), dataset.label_category)
    return counts, label, top > 0.04


def agreement(device: str, batch: int) -> list[str]:
    failures = []
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        root = Path(tmp) / "tiny"
        generate(root, n_train=8, n_val=48, image_size=64, n_classes=16, seed=0)
        dataset = BrodenDataset(root)
        rows = dataset.rows("val")
        images = np.stack([dataset.load_image(int(r)).transpose(2, 0, 1) for r in rows])
        labels = dataset.class_indices(rows)
        model = load_model("resnet18", 16, seed=0).eval()
        specs = {
            "clean": attack_spec("clean", {"method": "clean"}),
            "fgsm_2": attack_spec("fgsm_2", {"method": "fgsm", "eps": "2/255"}),
            "noise_2": attack_spec("noise_2", {"method": "noise", "eps": "2/255", "seed": 0}),
        }
        for name, spec in specs.items():
            cpu = run_attack(model.to("cpu"), images, labels, spec, batch, "cpu", rows=rows)["images"]
            dev = run_attack(model.to(device), images, labels, spec, batch, device, rows=rows)["images"]
            share = float(np.mean(cpu != dev))
            print(f"{name:>8} images: {share:.5%} of pixels differ between cpu and {device}")
            if name != "fgsm_2" and share > 0:
                failures.append(f"{name} images differ")
            if name == "fgsm_2" and share > FGSM_SHARE_MAX:
                failures.append(f"fgsm_2: {share:.3%} of pixels differ (> {FGSM_SHARE_MAX:.0%})")
            if name == "fgsm_2":
                attacked = cpu
        for name, pixels in (("clean", images), ("fgsm_2", attacked)):
            both_cpu = extract_layers(model.to("cpu"), pixels, LAYERS, batch, "cpu")
            both_dev = extract_layers(model.to(device), pixels, LAYERS, batch, device)
            for layer in LAYERS:
                a_cpu, a_dev = both_cpu[layer], both_dev[layer]
                alone = extract_activations(model.to(device), pixels, layer, batch, device)
                if not np.array_equal(alone, a_dev):
                    failures.append(f"{name} {layer}: one pass for both layers differs from this layer alone")
                rel = float(np.max(np.abs(a_cpu - a_dev)) / max(np.max(np.abs(a_cpu)), 1e-30))
                counts_cpu, label_cpu, det_cpu = dissect_layer(a_cpu, dataset, rows)
                counts_dev, label_dev, det_dev = dissect_layer(a_dev, dataset, rows)
                moved = int(np.sum((label_cpu != label_dev) | (det_cpu != det_dev)))
                print(
                    f"{name:>8} {layer}: activations differ by {rel:.2e} of the largest; "
                    f"{moved} of {len(label_cpu)} units change concept or detector status"
                )
                if rel > ACTIVATION_REL_MAX:
                    failures.append(f"{name} {layer}: activations differ by {rel:.2e}")
                if np.array_equal(a_cpu, a_dev) and not all(
                    np.array_equal(counts_cpu[k], counts_dev[k]) for k in ("intersection", "label_area")
                ):
                    failures.append(f"{name} {layer}: equal activations gave different counts")
    return failures


def rate(fn, images: int, device: str, reps: int = 3) -> float:
    """Images per second of fn (best of reps, after a warm-up)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)  # the device timed, not the current one
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return images / best


def speed(device: str, size: int, batch: int, batches: int) -> None:
    n = batch * batches
    images = np.random.default_rng(0).integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    labels = np.full(n, -1, np.int64)
    model = load_model("resnet18", 1000, seed=0).to(device).eval()
    gpu_batches = [torch.from_numpy(images[i : i + batch]).to(device) for i in range(0, n, batch)]
    fgsm = attack_spec("fgsm_8", {"method": "fgsm", "eps": "8/255"})

    def forward():
        with torch.no_grad():
            for u in gpu_batches:
                model(u.float() / 255)

    def forward_backward():
        for u in gpu_batches:
            x = (u.float() / 255).requires_grad_(True)
            logits = model(x)
            torch.autograd.grad(F.cross_entropy(logits, logits.detach().argmax(1)), x)

    rates = {
        "bare forward": rate(forward, n, device),
        "activations (layer3+layer4)": rate(lambda: extract_layers(model, images, LAYERS, batch, device), n, device),
        "bare forward+backward": rate(forward_backward, n, device),
        "attack FGSM (run_attack)": rate(lambda: run_attack(model, images, labels, fgsm, batch, device), n, device),
    }
    print(f"\nresnet18, {size} px, batch {batch}, {n} images on {device}:")
    for name, value in rates.items():
        print(f"  {name:<28} {value:9.1f} images/s")
    act_ratio = rates["bare forward"] / rates["activations (layer3+layer4)"]
    fgsm_cost = 1 / rates["bare forward+backward"] + 1 / rates["bare forward"]
    fgsm_ratio = (1 / rates["attack FGSM (run_attack)"]) / fgsm_cost
    print(f"  activations, time / bare forward                    {act_ratio:.2f}")
    print(f"  FGSM shard, time / bare (forward+backward + forward) {fgsm_ratio:.2f}")
    # clean set: one forward per image (its predictions); FGSM: the attack; each image set's
    # layers come from one activation pass; counting runs on the CPU.
    seconds = BRODEN_IMAGES * (
        1 / rates["bare forward"] + 1 / rates["attack FGSM (run_attack)"] + 2 / rates["activations (layer3+layer4)"]
    )
    print(
        f"  full Broden, clean + FGSM 8/255, layer3 + layer4: {seconds / 60:.1f} min of GPU time "
        f"({BRODEN_IMAGES} × (1 forward + 1 FGSM + 2 activation passes) at the rates above)"
    )
    train_speed(gpu_batches, device, batch)


def train_speed(gpu_batches, device: str, batch: int, steps: int = 4) -> None:
    """Training steps per second (images per second) of training.train_step, by precision."""
    print(f"\ntraining steps, resnet18, batch {batch}, on {device}:")
    for method in ("standard", "atda"):
        line = []
        for precision in ("float32", "bf16"):
            cfg = TrainSpec(method=method, lr=1e-3, eps=4 / 255, precision=precision)
            net = load_model("resnet18", 1000, seed=0).to(device)
            if precision == "bf16":
                net.to(memory_format=torch.channels_last)
            optimizer = training.make_optimizer(net, cfg)
            xs = [u.float() / 255 for u in gpu_batches[:steps]]
            ys = [torch.arange(len(x), device=device) % 1000 for x in xs]

            def run_steps(net=net, cfg=cfg, optimizer=optimizer, xs=xs, ys=ys):
                for x, y in zip(xs, ys):
                    training.train_step(net, x, y, cfg, optimizer)

            line.append((precision, rate(run_steps, steps * batch, device, reps=2)))
        speedup = line[1][1] / line[0][1]
        print("  " + f"{method:<9} " + "  ".join(f"{p} {r:8.1f} images/s" for p, r in line) + f"  bf16 {speedup:.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--skip-speed", action="store_true", help="only the agreement checks")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        reproducible_cuda()  # the numerics of the workflow's GPU jobs
        print(f"device: {torch.cuda.get_device_name(args.device)}; torch {torch.__version__}")
    failures = agreement(args.device, batch=16)
    if not args.skip_speed:
        speed(args.device, args.size, args.batch, args.batches)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    print("gpu check: " + ("FAILED" if failures else "passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
