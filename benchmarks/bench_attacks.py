"""Cost of the attack stage, as ratios (prints; never asserts on timing).

1. FGSM throughput of `run_attack` (uint8 in, attack, adversarial predictions, uint8 out)
   plus the HDF5 write of the shard, against a bare forward + backward pass of the same
   model and batch size: the input gradient FGSM needs (torch.autograd.grad w.r.t. x).
   Target: ratio >= 0.8. Also shown against a bare forward + backward + forward (the
   gradient plus the forward pass on the adversarial images that adv_pred needs), the
   least work a shard with adversarial predictions can cost.
2. PGD with k steps as a multiple of one FGSM: bare primitives (k gradient steps vs one,
   about k) and whole `run_attack` calls (which add a clean and an adversarial forward).

Timings are the fastest of --reps interleaved repetitions, wall clock and process CPU time.

Usage: python benchmarks/bench_attacks.py [--size 112] [--batch 32] [--batches 3] [--steps 5]
"""

from __future__ import annotations

import argparse
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advdissect.nets.attack_runner import run_attack
from advdissect.nets.attacks import SignSteps, fgsm, pgd
from advdissect.nets.models import load_model
from advdissect.specs import AttackSpec, attack_spec
from advdissect.store import write_h5


def measure(cases: dict, reps: int) -> dict[str, tuple[float, float]]:
    """Fastest (wall, CPU) seconds of each case; cases interleaved so load drift hits all alike."""
    best = {name: (math.inf, math.inf) for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="PGD steps k")
    parser.add_argument("--reps", type=int, default=2, help="repetitions; the fastest counts")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_model("resnet18", num_classes=1000, normalization="imagenet", seed=0)
    n = args.batch * args.batches
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, args.size, args.size), dtype=np.uint8)
    labels = np.full(n, -1, np.int64)
    batches = [torch.from_numpy(images[i : i + args.batch]) for i in range(0, n, args.batch)]
    print(
        f"resnet18, {args.size} px, batch {args.batch}, {args.batches} batches ({n} images), "
        f"torch threads {torch.get_num_threads()}, best of {args.reps}"
    )

    def bare_grad(extra_forward: bool = False) -> None:
        for u in batches:
            x = (u.float() / 255).requires_grad_(True)
            logits = model(x)
            loss = F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)
            if extra_forward:
                with torch.no_grad():
                    model((x.detach() + 2 / 255 * grad.sign()).clamp(0, 1))

    def bare_backward_params() -> None:
        for u in batches:
            x = (u.float() / 255).requires_grad_(True)
            logits = model(x)
            F.cross_entropy(logits, logits.detach().argmax(1), reduction="sum").backward()
        model.zero_grad(set_to_none=True)

    spec_fgsm = attack_spec("fgsm2", {"method": "fgsm", "eps": "2/255"})
    spec_pgd = attack_spec("pgd", {"method": "pgd", "eps": "4/255", "step": "1/255", "steps": args.steps})
    tmp = Path(tempfile.mkdtemp(prefix="bench_attacks."))

    def shard(spec: AttackSpec) -> None:
        out = run_attack(model, images, labels, spec, args.batch, "cpu")
        write_h5(tmp / "0000.h5", "images", {"attack": spec.name}, {"rows": np.arange(n), **out})

    x = batches[0].float() / 255
    y = torch.zeros(x.shape[0], dtype=torch.long)
    k = args.steps
    pgd_steps = SignSteps(4 / 255, 1 / 255, k)
    bare_grad()  # warm-up: allocator, kernels
    t = measure(
        {
            "bare": bare_grad,
            "bare_params": bare_backward_params,
            "bare_fwd": lambda: bare_grad(extra_forward=True),
            "fgsm_shard": lambda: shard(spec_fgsm),
            "fgsm_prim": lambda: fgsm(model, x, y, 4 / 255),
            "pgd_prim": lambda: pgd(model, x, y, pgd_steps, generator=torch.Generator().manual_seed(0)),
        },
        args.reps,
    )
    t |= measure({"pgd_shard": lambda: shard(spec_pgd)}, 1)

    def line(label: str, name: str, images: int = n) -> None:
        wall, cpu = t[name]
        print(f"{label:<44} {wall:7.2f} s wall {cpu:7.2f} s CPU  {images / wall:6.1f} img/s")

    def ratio(label: str, num: str, den: str, note: str = "") -> None:
        print(f"{label:<44} {t[num][0] / t[den][0]:5.2f} wall  {t[num][1] / t[den][1]:5.2f} CPU  {note}")

    line("bare forward+backward (input grad)", "bare")
    line("bare forward+backward (weight grads too)", "bare_params")
    line("bare forward+backward+forward", "bare_fwd")
    line("run_attack FGSM + uint8 + HDF5 write", "fgsm_shard")
    line(f"run_attack PGD k={k} + HDF5 write (1 run)", "pgd_shard")
    line("primitive fgsm, one batch", "fgsm_prim", args.batch)
    line(f"primitive pgd k={k}, one batch", "pgd_prim", args.batch)
    print("throughput ratios (higher = run_attack closer to the bare pass):")
    ratio("  FGSM shard vs fwd+bwd (input grad)", "bare", "fgsm_shard", "(target >= 0.8)")
    ratio("  FGSM shard vs fwd+bwd (weight grads too)", "bare_params", "fgsm_shard")
    ratio("  FGSM shard vs fwd+bwd+fwd", "bare_fwd", "fgsm_shard")
    print("cost ratios:")
    ratio(f"  PGD k={k} / FGSM, primitives", "pgd_prim", "fgsm_prim", f"(expected about k = {k})")
    ratio(
        f"  PGD k={k} / FGSM, run_attack shards", "pgd_shard", "fgsm_shard", "(k gradient steps + 2 forwards vs 1 + 1)"
    )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
