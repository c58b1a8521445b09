"""Dissection-core benchmark: prints timings and ratios; asserts nothing about speed.

    python benchmarks/bench_dissection.py [--threads 2] [--images 256]

1. IoU counting, µs per (image, unit) pair, for a 512-unit 7×7 layer at 112×112 masks
   (smooth random ReLU activations, thresholds at q = 0.005 computed exactly, segmentations
   with a few labels per image in 3 pixel layers plus scene/texture), against a naive
   per-image, per-unit loop in NetDissect-Lite's style on a slice of the images.
2. Activation extraction (ResNet-18, 112 px, batch 32) as a ratio of a bare forward pass: layer4,
   layer3, and both from one pass (what an activations job does).
3. Peak traced memory of compute_thresholds and of the count merge for 2 and 8 shards.

With --broden-layer it instead times the counting of one full-Broden-sized layer: 63,305 images
in shards of 1,000 (as config/paper.yaml cuts them), 512 units, 7×7 maps, the generated
segmentations above; CPU time of count_shard alone, data generation excluded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from broden_labels import N_LABELS, label_category  # benchmarks/: run as scripts

from advdissect import store
from advdissect.dissect.activations import extract_activations, extract_layers
from advdissect.dissect.counts import LabelTable, count_shard, merge_counts
from advdissect.dissect.tally import counts_group, read_counts
from advdissect.dissect.thresholds import compute_thresholds, threshold_from_top, top_count, top_values

SEG = (112, 112)


def activations(n: int, c: int = 512, size: int = 7, seed: int = 0) -> np.ndarray:
    """ReLU of box-smoothed noise plus a per-(image, unit) level: smooth, sparse, correlated maps."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(n, c, size + 2, size + 2)).astype(np.float32)
    s = sum(a[:, :, i : i + size, j : j + size] for i in range(3) for j in range(3)) / 3
    s += rng.normal(size=(n, c, 1, 1)).astype(np.float32)
    return np.maximum(s, 0).astype(np.float32)


def _regions(rng, labels, n_seeds):
    """Voronoi regions of random seeds, each carrying one of `labels`."""
    yy, xx = np.mgrid[: SEG[0], : SEG[1]]
    seeds = rng.uniform(0, SEG[0], size=(n_seeds, 2))
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return np.asarray(labels)[d.argmin(axis=0)]


def segmentations(n: int, seed: int = 0):
    """Color regions everywhere, 3-6 objects, a few small parts, a scene and sometimes a texture."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        color = _regions(rng, rng.integers(1, 12, size=6), 6)
        objects = _regions(rng, rng.choice(np.arange(12, 596), size=8), 8)
        objects[rng.random() < 0.5 and objects == objects[0, 0]] = 0
        parts = np.zeros(SEG, np.int64)
        for _ in range(rng.integers(0, 3)):
            y, x = rng.integers(0, SEG[0] - 20, size=2)
            parts[y : y + rng.integers(6, 20), x : x + rng.integers(6, 20)] = rng.integers(596, 830)
        pixel = np.stack([color, objects, parts]).astype(np.int32)
        image = [rng.integers(862, 1151)] + ([rng.integers(1151, 1198)] if rng.random() < 0.3 else [])
        out.append((pixel, np.array(image, np.int64)))
    return out


def naive_counts(acts, thresholds, segs, cat):
    """NetDissect-Lite's loop: per image, per unit: upsample, threshold, bincount."""
    n, c = acts.shape[:2]
    labelcat = np.zeros((N_LABELS, 6))
    labelcat[np.arange(N_LABELS)[cat >= 0], cat[cat >= 0]] = 1
    both = np.zeros((c, N_LABELS))
    units = np.zeros(c)
    units_cat = np.zeros((c, 6))
    for i in range(n):
        pixels, scalars = segs[i]
        for u in range(c):
            fm = acts[i, u]
            if fm.max() > thresholds[u]:
                mask = F.interpolate(torch.from_numpy(fm)[None, None], size=SEG, mode="bilinear", align_corners=False)[
                    0, 0
                ].numpy()
                idx = np.argwhere(mask > thresholds[u])
                units[u] += len(idx)
                bt = np.bincount(pixels[:, idx[:, 0], idx[:, 1]].ravel(), minlength=N_LABELS)
                bt[0] = 0
                tally_cat = bt @ labelcat
                both[u] += bt
                for s in scalars:
                    tally_cat += labelcat[s]
                    both[u, s] += len(idx)
                units_cat[u] += len(idx) * (tally_cat > 0)
    return units


def best_of(fn, repeat, clock=time.perf_counter):
    best = float("inf")
    for _ in range(repeat):
        t = clock()
        fn()
        best = min(best, clock() - t)
    return best


def bench_counting(n_images: int, naive_images: int) -> None:
    acts = activations(n_images)
    segs = segmentations(n_images)
    cat = label_category()
    n_total = n_images * 49
    thresholds = threshold_from_top(top_values(acts, top_count(n_total, 0.005)), n_total, 0.005)
    counts = {}

    def fast():
        counts["fast"] = count_shard(acts, thresholds, segs, LabelTable(cat, N_LABELS, SEG))

    # CPU time of this process: on a shared machine wall time also counts waiting for a core
    pairs, naive_pairs = n_images * 512, naive_images * 512
    t_fast = best_of(fast, 3, time.process_time) / pairs * 1e6
    wall_fast = best_of(fast, 1) / pairs * 1e6
    naive = lambda: naive_counts(acts[:naive_images], thresholds, segs[:naive_images], cat)  # noqa: E731
    t_naive = best_of(naive, 2, time.process_time) / naive_pairs * 1e6
    wall_naive = best_of(naive, 1) / naive_pairs * 1e6
    active = (acts.reshape(n_images, 512, -1).max(-1) > thresholds).mean()
    fast_total = count_shard(acts[:naive_images], thresholds, segs[:naive_images], LabelTable(cat, N_LABELS, SEG))
    naive_total = naive_counts(acts[:naive_images], thresholds, segs[:naive_images], cat)
    print("IoU counting, 512 units, 7x7 maps, 112x112 masks, q = 0.005")
    print(
        f"  images {n_images}; (image, unit) pairs with a cell above T: {active:.1%}; "
        f"mask pixels per pair: {counts['fast']['activation_total'].sum() / (n_images * 512):.1f}"
    )
    print(f"  fast count_shard:          {t_fast:8.2f} us CPU per (image, unit)  (wall {wall_fast:.2f})")
    print(
        f"  naive per-unit loop:       {t_naive:8.2f} us CPU per (image, unit)  (wall {wall_naive:.2f}; "
        f"{naive_images} images)"
    )
    print(f"  speed-up naive / fast:     {t_naive / t_fast:8.1f} x")
    agree = np.mean(fast_total["activation_total"] == naive_total)
    print(f"  mask sizes agree with F.interpolate(float32) > T on {agree:.1%} of units")


def bench_broden_layer(n_images: int = 63_305, shard: int = 1000) -> None:
    cat = label_category()
    first = activations(shard, seed=0)
    n_total = shard * 49
    thresholds = threshold_from_top(top_values(first, top_count(n_total, 0.005)), n_total, 0.005)
    cpu = wall = 0.0
    for i, start in enumerate(range(0, n_images, shard)):
        n = min(shard, n_images - start)
        acts = first[:n] if i == 0 else activations(n, seed=i)
        segs = segmentations(n, seed=i)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        count_shard(acts, thresholds, segs, LabelTable(cat, N_LABELS, SEG))
        cpu += time.process_time() - t_cpu
        wall += time.perf_counter() - t_wall
    shards = -(-n_images // shard)
    print(f"IoU counting of one full-Broden-sized layer: {n_images} images in {shards} shards, 512 units, 7x7 maps")
    print(f"  count_shard CPU time: {cpu:8.1f} s in all, {cpu / shards:.2f} s per shard (wall {wall:.1f} s)")
    print(f"  per (image, unit):    {cpu / (n_images * 512) * 1e6:8.2f} us CPU")


def bench_activations(n_images: int = 64, batch: int = 32, repeat: int = 3) -> None:
    from advdissect.nets.models import load_model

    model = load_model("resnet18", 1000, seed=0)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(n_images, 3, 112, 112), dtype=np.uint8)
    x = torch.from_numpy(imgs).float() / 255

    def bare():
        with torch.no_grad():
            for i in range(0, n_images, batch):
                model(x[i : i + batch])

    runs = {"bare": bare}
    for layer in ("layer4", "layer3"):
        runs[layer] = lambda layer=layer: extract_activations(model, imgs, layer, batch, "cpu")
    runs["layer3+layer4"] = lambda: extract_layers(model, imgs, ["layer3", "layer4"], batch, "cpu")
    bare()
    best = {name: float("inf") for name in runs}
    for _ in range(repeat):  # interleaved, so load changes hit every variant alike
        for name, fn in runs.items():
            best[name] = min(best[name], best_of(fn, 1))
    print(f"Activation extraction, ResNet-18 at 112 px, batch {batch}, {n_images} images (best of {repeat})")
    print(f"  bare forward pass:         {best['bare'] / n_images * 1e3:8.2f} ms per image")
    for layer in ("layer4", "layer3", "layer3+layer4"):
        print(
            f"  extract {layer + ':':<15} {best[layer] / n_images * 1e3:8.2f} ms per image  "
            f"(ratio to bare forward {best[layer] / best['bare']:.2f})"
        )


def _peak(fn) -> float:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def bench_memory(tmp: Path, per_shard: int = 64) -> None:
    ident = {"dataset": "bench", "model": "m", "attack": "clean", "layer": "layer4"}
    cat = label_category()
    rng = np.random.default_rng(1)
    shard_mb = per_shard * 512 * 49 * 4 / 2**20
    print(
        f"Peak traced memory (one activation shard: {per_shard} images x 512 x 7 x 7 float32 = {shard_mb:.1f} MiB; "
        f"one count shard: {512 * N_LABELS * 8 / 2**20:.1f} MiB)"
    )
    for n_shards in (2, 8):
        act_paths, count_paths = [], []
        for s in range(n_shards):
            path = tmp / f"act{n_shards}_{s}.h5"
            store.write_h5(
                path,
                "activations",
                dict(ident, shard=s),
                {"rows": np.arange(per_shard), store.layer_key(ident["layer"]): activations(per_shard, seed=s)},
            )
            act_paths.append(path)
            cpath = tmp / f"counts{n_shards}_{s}.h5"
            arrays = {
                "intersection": rng.integers(0, 1000, size=(512, N_LABELS)),
                "label_area": rng.integers(0, 10**6, size=N_LABELS),
                "activation_lite": rng.integers(0, 10**5, size=(512, 6)),
                "activation_original": rng.integers(0, 10**5, size=(512, 6)),
                "activation_total": rng.integers(0, 10**5, size=512),
                "label_category": cat,
            }
            group = counts_group("self", ident["layer"])
            arrays = {f"{group}/{key}": value for key, value in arrays.items()}
            c_ident = {k: v for k, v in ident.items() if k != "layer"}
            store.write_h5(cpath, "counts", dict(c_ident, shard=s, n_images=per_shard), arrays, chunk_rows=False)
            count_paths.append(cpath)
        t_mem = _peak(lambda paths=act_paths: compute_thresholds(paths, 0.005, ident))
        m_mem = _peak(lambda paths=count_paths: merge_counts(read_counts(p, dict(ident, mode="self")) for p in paths))
        print(
            f"  {n_shards} shards ({n_shards * per_shard:4d} images): compute_thresholds {t_mem:6.1f} MiB, "
            f"count merge {m_mem:6.1f} MiB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--naive-images", type=int, default=4)
    parser.add_argument("--broden-layer", action="store_true", help="time the counting of a full-Broden-sized layer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch threads {torch.get_num_threads()}; numpy is single-threaded here; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    if args.broden_layer:
        bench_broden_layer()
        return
    bench_counting(args.images, args.naive_images)
    bench_activations()
    with tempfile.TemporaryDirectory() as tmp:
        bench_memory(Path(tmp))


if __name__ == "__main__":
    main()
