"""Cost of a training step under `precision: bf16` against `precision: float32` (prints ratios).

    python benchmarks/bench_training.py [--threads 1] [--reps 3] [--batch 32]

For each of the demo's architectures at its demo size (ResNet-18 and AlexNet at 112 px, VGG-11-BN
at 64 px, 16 classes) and for the standard and ATDA methods, `training.train_step` is timed with
each precision: the same batch, interleaved repetitions, the fastest kept. bf16 means autocast
around the update's forward and loss, channels-last weights and fused optimizer steps
(advdissect.nets.training); the FGSM batch of ATDA is made in float32 either way.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from advdissect.nets import training
from advdissect.nets.models import load_model
from advdissect.specs import TrainSpec

CASES = (("resnet18", 112), ("alexnet", 112), ("vgg11_bn", 64))


def step_seconds(arch: str, size: int, method: str, batch: int, reps: int) -> dict[str, float]:
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 16
    setups = {}
    for precision in ("float32", "bf16"):
        cfg = TrainSpec(method=method, lr=1e-3, eps=4 / 255, precision=precision)
        model = load_model(arch, 16, seed=0)
        if precision == "bf16":
            model.to(memory_format=torch.channels_last)
        setups[precision] = (model, cfg, training.make_optimizer(model, cfg))
    best = {p: math.inf for p in setups}
    for rep in range(reps + 1):  # the first round warms up
        for precision, (model, cfg, optimizer) in setups.items():
            start = time.perf_counter()
            training.train_step(model, x, y, cfg, optimizer)
            if rep:
                best[precision] = min(best[precision], time.perf_counter() - start)
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"training step, batch {args.batch}, {args.threads} thread(s), fastest of {args.reps}:")
    print(f"  {'arch':<10} {'px':>4} {'method':<9} {'float32 s':>10} {'bf16 s':>8} {'speed-up':>9}")
    for arch, size in CASES:
        for method in ("standard", "atda"):
            t = step_seconds(arch, size, method, args.batch, args.reps)
            print(
                f"  {arch:<10} {size:>4} {method:<9} {t['float32']:>10.3f} {t['bf16']:>8.3f} "
                f"{t['float32'] / t['bf16']:>8.2f}x"
            )


if __name__ == "__main__":
    main()
