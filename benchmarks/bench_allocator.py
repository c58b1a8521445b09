"""Cost of glibc handing freed memory back to the kernel, in the compute jobs' steps (prints ratios).

    python benchmarks/bench_allocator.py [--threads 1] [--steps 4] [--batch 32]

For each of the demo's architectures at its demo size, one process runs with the C library's
default allocator settings and one after `device.keep_freed_memory()` (no mmap for large blocks,
no heap trimming), alternately. Each times, on the same seeded batch: training steps
(`training.train_step`, bf16, standard), FGSM batches (`attacks.fgsm`) and forward passes
(what an activations job does), in CPU seconds (user + system: the page faults the default
settings cause are system time). Each also hashes the weights after its training steps: the
allocator must not change a single bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time

CASES = (("resnet18", 112), ("alexnet", 112), ("vgg11_bn", 64))
OPS = ("train_step", "fgsm", "forward")


def worker(arch: str, size: int, keep: bool, steps: int, batch: int, threads: int) -> dict:
    import torch

    from advdissect.nets import training
    from advdissect.nets.attacks import fgsm
    from advdissect.nets.device import keep_freed_memory
    from advdissect.nets.models import load_model
    from advdissect.specs import TrainSpec

    torch.set_num_threads(threads)
    torch.manual_seed(0)  # dropout
    if keep and not keep_freed_memory():
        raise SystemExit("keep_freed_memory: not a glibc system")
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    y = torch.arange(batch) % 16
    cfg = TrainSpec(method="standard", lr=1e-3)
    model = load_model(arch, 16, seed=0).to(memory_format=torch.channels_last)
    optimizer = training.make_optimizer(model, cfg)
    ops = {
        "train_step": lambda: training.train_step(model, x, y, cfg, optimizer),
        "fgsm": lambda: fgsm(model.eval(), x, y, 8 / 255),
        "forward": lambda: torch.no_grad()(model.eval())(x),
    }
    seconds = {}
    for name, op in ops.items():
        op()  # warm-up
        start = time.process_time()
        for _ in range(steps):
            op()
        seconds[name] = (time.process_time() - start) / steps
        if name == "train_step":
            weights = hashlib.sha256()
            for tensor in model.state_dict().values():
                weights.update(tensor.contiguous().numpy().tobytes())
    return {"seconds": seconds, "weights": weights.hexdigest()}


def run(arch: str, size: int, keep: bool, args) -> dict:
    command = [sys.executable, __file__, "--worker", arch, str(size), "keep" if keep else "default"]
    command += ["--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2, help="alternating process pairs; the faster kept")
    parser.add_argument("--worker", nargs=3, metavar=("ARCH", "SIZE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        arch, size, mode = args.worker
        print(json.dumps(worker(arch, int(size), mode == "keep", args.steps, args.batch, args.threads)))
        return
    print(
        f"CPU seconds (user + system) per batch of {args.batch}, {args.threads} thread(s), "
        f"mean of {args.steps} after a warm-up, faster of {args.rounds} alternating processes:"
    )
    print(f"  {'arch':<10} {'px':>4} {'step':<11} {'default s':>10} {'kept s':>8} {'speed-up':>9}  weights")
    for arch, size in CASES:
        best = {False: {}, True: {}}
        hashes = set()
        for _ in range(args.rounds):
            for keep in (False, True):
                result = run(arch, size, keep, args)
                hashes.add(result["weights"])
                for op, s in result["seconds"].items():
                    best[keep][op] = min(best[keep].get(op, s), s)
        same = "identical" if len(hashes) == 1 else "DIFFER"
        for op in OPS:
            default, kept = best[False][op], best[True][op]
            print(f"  {arch:<10} {size:>4} {op:<11} {default:>10.3f} {kept:>8.3f} {default / kept:>8.2f}x  {same}")


if __name__ == "__main__":
    main()
