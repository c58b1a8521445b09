"""Bootstrap at Broden's size: time and peak memory of resampling one dissection's records.

    python benchmarks/bench_bootstrap.py [--images 63305] [--units 512] [--resamples 1000]

Generates the per-image records a count job would write for one layer (int32 as stored, in
shards of 4,000 images as config/paper.yaml cuts them) at the rates `advdissect.study.disk`
estimates with (0.3 recorded masks per image and unit, 3.5 labels per mask, 10 labels per
image), then runs what a bootstrap job runs on them: `ImageCounts.from_shards` (which checks
that the records add up to the counts) and the resamples' detector counts. Prints the CPU
seconds of each step and the memory a bootstrap job would hold at its peak: the records as read
from the counts files plus the peak of what the bootstrap allocates (numpy and scipy arrays,
traced); asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
from broden_labels import N_LABELS, label_category  # benchmarks/: run as scripts

from advdissect.dissect.bootstrap import ImageCounts, bootstrap_detectors
from advdissect.dissect.counts import N_CAT
from advdissect.study.disk import LABELS_PER_IMAGE, LABELS_PER_MASK, RECORDED_PAIRS


def shard_records(rng: np.random.Generator, n: int, units: int, cat: np.ndarray) -> dict[str, np.ndarray]:
    """Counts and per-image records of one shard, consistent with each other."""
    pairs = rng.random((n, units)) < RECORDED_PAIRS
    image, unit = np.nonzero(pairs)
    size = rng.integers(1, 400, image.size).astype(np.int32)
    # each image's labels; each mask meets a few of them
    image_labels = rng.integers(1, N_LABELS, (n, LABELS_PER_IMAGE))
    per_mask = rng.poisson(LABELS_PER_MASK - 1, image.size) + 1
    mask_of = np.repeat(np.arange(image.size), per_mask)
    label = image_labels[image[mask_of], rng.integers(0, LABELS_PER_IMAGE, mask_of.size)]
    # one record per (image, unit, label): merge repeats
    key = np.unique((image[mask_of].astype(np.int64) * units + unit[mask_of]) * N_LABELS + label)
    i_image, rest = np.divmod(key, units * N_LABELS)
    i_unit, i_label = np.divmod(rest, N_LABELS)
    mask_size = np.zeros((n, units), np.int64)
    mask_size[image, unit] = size
    count = np.minimum(rng.integers(1, 200, key.size), mask_size[i_image, i_unit])
    area_key = np.unique(np.arange(n)[:, None] * N_LABELS + image_labels)
    a_image, a_label = np.divmod(area_key, N_LABELS)
    area = rng.integers(200, 5000, area_key.size)
    bits = np.zeros(n, np.int64)
    for c in range(N_CAT):
        bits |= (cat[image_labels] == c).any(axis=1).astype(np.int64) << c
    inside = rng.integers(0, 64, image.size)
    rec = {
        "per_image/intersection/image": i_image, "per_image/intersection/unit": i_unit,
        "per_image/intersection/label": i_label, "per_image/intersection/count": count,
        "per_image/label_area/image": a_image, "per_image/label_area/label": a_label,
        "per_image/label_area/area": area,
        "per_image/activation/image": image, "per_image/activation/unit": unit,
        "per_image/activation/size": size, "per_image/activation/inside": inside,
        "per_image/image_categories/image": np.arange(n), "per_image/image_categories/bits": bits,
    }  # fmt: skip
    rec = {k: v.astype(np.uint8 if k.endswith(("inside", "bits")) else np.int32) for k, v in rec.items()}
    # the counts these records add up to
    inter = np.zeros(units * N_LABELS, np.int64)
    np.add.at(inter, i_unit * N_LABELS + i_label, count)
    bit_matrix = (inside[:, None] >> np.arange(N_CAT)) & 1
    lite = np.zeros((units, N_CAT), np.int64)
    np.add.at(lite, unit, size[:, None].astype(np.int64) * bit_matrix)
    original = np.zeros((units, N_CAT), np.int64)
    np.add.at(original, unit, size[:, None].astype(np.int64) * ((bits[image][:, None] >> np.arange(N_CAT)) & 1))
    rec.update(
        intersection=inter.reshape(units, N_LABELS),
        label_area=np.bincount(a_label, weights=area, minlength=N_LABELS).astype(np.int64),
        activation_lite=lite,
        activation_original=original,
        activation_total=np.bincount(unit, weights=size, minlength=units).astype(np.int64),
        label_category=cat,
        n_images=np.array(n, np.int64),
    )
    return rec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=63305)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--shard-size", type=int, default=4000)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    cat = label_category()
    sizes = [min(args.shard_size, args.images - s) for s in range(0, args.images, args.shard_size)]
    parts = [shard_records(rng, n, args.units, cat) for n in sizes]
    stored = sum(v.nbytes for p in parts for k, v in p.items() if k.startswith("per_image/"))
    n_inter = sum(p["per_image/intersection/image"].size for p in parts)
    n_act = sum(p["per_image/activation/image"].size for p in parts)
    print(f"{args.images} images, {args.units} units, {len(parts)} shards: {n_act:,} mask records, "
          f"{n_inter:,} intersection records, {stored / 2**20:.0f} MiB as stored")  # fmt: skip
    tracemalloc.start()
    t = time.process_time()
    image_counts = ImageCounts.from_shards(parts)
    t_load = time.process_time() - t
    t = time.process_time()
    frame = bootstrap_detectors(image_counts, args.resamples, 0, "lite", 0.04)
    t_boot = time.process_time() - t
    _, traced = tracemalloc.get_traced_memory()
    print(f"from_shards (join + check): {t_load:.1f} CPU-s")
    print(f"{args.resamples} resamples: {t_boot:.1f} CPU-s ({1000 * t_boot / args.resamples:.0f} ms each)")
    print(f"memory at the peak: {(stored + traced) / 2**30:.2f} GiB ({stored / 2**30:.2f} GiB of records as read, "
          f"{traced / 2**30:.2f} GiB allocated by the bootstrap at its peak)")  # fmt: skip
    print(f"detectors per resample (all): mean {frame['all'].mean():.1f}")


if __name__ == "__main__":
    main()
