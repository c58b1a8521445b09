"""GPU throughput of the study's three networks, and what the deterministic settings cost.

    python benchmarks/gpu_rates.py [--device cuda] [--batch 256] [--batches 4]

For AlexNet, VGG-11 and ResNet-18 at 224 px with 1,000 classes (random weights, random images),
images per second of a bare forward pass, of the activation job's work (extract_layers for the
layers config/paper.yaml dissects) and of the FGSM shard's work (run_attack), first under the
workflow's GPU settings (advdissect.nets.device.reproducible_cuda: full float32, no TF32,
deterministic cuDNN) and then under torch's defaults with cuDNN's autotuner (TF32 convolutions,
benchmark mode). From the workflow's rates it prints the GPU time of config/paper.yaml's
attacks and activation passes over full Broden (63,305 images), per network.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from advdissect.data.download import BRODEN_IMAGES as BRODEN_SIZES
from advdissect.dissect.activations import extract_layers
from advdissect.nets.attack_runner import run_attack
from advdissect.nets.device import reproducible_cuda
from advdissect.nets.models import load_model
from advdissect.specs import attack_spec

BRODEN_IMAGES = BRODEN_SIZES["broden1_224"]
NETWORKS = {"alexnet": ["last_conv"], "vgg11": ["last_conv"], "resnet18": ["layer3", "layer4"]}
# config/paper.yaml per image set: (forward + backward) passes and forward passes of its attack job
PAPER_SETS = {
    "clean": (0, 1),
    "fgsm_1": None,
    "fgsm_2": None,
    "fgsm_4": None,
    "fgsm_8": None,
    "bim_8": (10, 1),
    "pgd_8": (10, 2),
    "noise_8": (0, 2),
}


def rate(fn, images: int, device: str, reps: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return images / best


def measure(device: str, batch: int, batches: int) -> dict[str, dict[str, float]]:
    n = batch * batches
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)
    labels = np.full(n, -1, np.int64)
    fgsm = attack_spec("fgsm_8", {"method": "fgsm", "eps": "8/255"})
    out = {}
    for arch, layers in NETWORKS.items():
        model = load_model(arch, 1000, seed=0).to(device).eval()
        gpu = [torch.from_numpy(images[i : i + batch]).to(device) for i in range(0, n, batch)]

        def forward(model=model, gpu=gpu):
            with torch.no_grad():
                for u in gpu:
                    model(u.float() / 255)

        def forward_backward(model=model, gpu=gpu):
            for u in gpu:
                x = (u.float() / 255).requires_grad_(True)
                logits = model(x)
                torch.autograd.grad(torch.nn.functional.cross_entropy(logits, logits.detach().argmax(1)), x)

        out[arch] = {
            "forward": rate(forward, n, device),
            "forward+backward": rate(forward_backward, n, device),
            "activations": rate(lambda m=model, ly=layers: extract_layers(m, images, ly, batch, device), n, device),
            "fgsm": rate(lambda m=model: run_attack(m, images, labels, fgsm, batch, device), n, device),
        }
    return out


def print_rates(title: str, rates: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'network':<9} {'forward':>9} {'fwd+bwd':>9} {'activations':>12} {'FGSM shard':>11}  images/s")
    for arch, r in rates.items():
        print(
            f"  {arch:<9} {r['forward']:>9.0f} {r['forward+backward']:>9.0f} {r['activations']:>12.0f} "
            f"{r['fgsm']:>11.0f}"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args(argv)
    print(f"device: {torch.cuda.get_device_name(args.device)}; torch {torch.__version__}; 224 px, batch {args.batch}")
    reproducible_cuda()
    workflow = measure(args.device, args.batch, args.batches)
    print_rates("workflow settings (float32, no TF32, deterministic cuDNN)", workflow)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = True
    torch.use_deterministic_algorithms(False)
    defaults = measure(args.device, args.batch, args.batches)
    print_rates("torch defaults with TF32 and cuDNN's autotuner", defaults)
    print("\n  speed of the defaults / the workflow's settings:")
    for arch in NETWORKS:
        ratios = "  ".join(f"{k} {defaults[arch][k] / workflow[arch][k]:.2f}" for k in workflow[arch])
        print(f"  {arch:<9} {ratios}")
    print("\nconfig/paper.yaml on full Broden at the workflow's rates (attack jobs + one activation pass per set):")
    total = 0.0
    for arch, r in workflow.items():
        seconds = 0.0
        for passes in PAPER_SETS.values():
            if passes is None:
                seconds += BRODEN_IMAGES / r["fgsm"]
            else:
                grads, forwards = passes
                seconds += BRODEN_IMAGES * (grads / r["forward+backward"] + forwards / r["forward"])
            seconds += BRODEN_IMAGES / r["activations"]
        total += seconds
        print(f"  {arch:<9} {seconds / 60:6.1f} min")
    print(f"  {'all':<9} {total / 60:6.1f} min of GPU arithmetic, job start-ups not counted")


if __name__ == "__main__":
    main()
