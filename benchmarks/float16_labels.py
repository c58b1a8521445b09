"""What `dissection.activation_dtype: float16` changes: detector labels against float32, on a finished run.

    python benchmarks/float16_labels.py [--results results] [--out results/benchmarks/float16_labels.csv]

For every dissected layer of every model on its clean images (thresholds self), the stored
float32 activations are rounded to float16 as an activation job storing float16 does (it
computes in float32 and casts), then thresholds, counts, IoU and best labels are recomputed by
the library's own functions. Per layer it writes: units, detectors under each dtype, units
whose detector status changed, detectors (in both) whose best label changed, and the largest
change of a unit's best IoU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from advdissect import store
from advdissect.data.broden import BrodenDataset
from advdissect.dissect.counts import LabelTable, count_shard, iou, merge_counts
from advdissect.dissect.tally import best_concepts
from advdissect.dissect.thresholds import threshold_from_top, top_count, top_values

CLEAN = "clean"


def best_labels(acts_shards, rows_shards, dataset, quantile, denominator, cut):
    n_total = sum(a.shape[0] for a in acts_shards) * acts_shards[0].shape[2] * acts_shards[0].shape[3]
    k = top_count(n_total, quantile)
    top = np.concatenate([top_values(a, k) for a in acts_shards], axis=1)
    top = -np.sort(-top, axis=1)[:, :k]
    thresholds = threshold_from_top(top, n_total, quantile)
    parts = []
    for acts, rows in zip(acts_shards, rows_shards):
        segs = [dataset.load_segmentation(int(r)) for r in rows]
        parts.append(count_shard(acts, thresholds, segs, LabelTable.of(dataset)))
    counts = merge_counts(parts)
    label, _, top_iou = best_concepts(iou(counts, denominator), dataset.label_category)
    return label, top_iou, top_iou > cut


def compare(results: Path, dataset_name: str, model: str, layer: str, quantile: float, denominator: str, cut: float):
    shard_paths = sorted((results / dataset_name / model / CLEAN / "activations").glob("*.h5"))
    acts, rows = [], []
    for path in shard_paths:
        with store.open_layer(path, {"layer": layer}) as (f, layer_acts):
            if store.read_attrs(f).get("dtype") != "float32":
                raise SystemExit(f"{path}: stored as {store.read_attrs(f).get('dtype')}; run with float32 first")
            acts.append(layer_acts[()])
            rows.append(f["rows"][()])
    dataset = BrodenDataset(Path("resources/synthetic") / dataset_name)
    l32, iou32, det32 = best_labels(acts, rows, dataset, quantile, denominator, cut)
    half = [a.astype(np.float16).astype(np.float32) for a in acts]
    l16, iou16, det16 = best_labels(half, rows, dataset, quantile, denominator, cut)
    both = det32 & det16
    return {
        "dataset": dataset_name,
        "model": model,
        "layer": layer,
        "units": len(l32),
        "detectors_float32": int(det32.sum()),
        "detectors_float16": int(det16.sum()),
        "detector_status_changed": int(np.sum(det32 != det16)),
        "detector_label_changed": int(np.sum(both & (l32 != l16))),
        "max_iou_change": float(np.max(np.abs(iou32 - iou16))),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/float16_labels.csv"))
    parser.add_argument("--quantile", type=float, default=0.005)
    parser.add_argument("--denominator", default="lite")
    parser.add_argument("--iou-threshold", type=float, default=0.04)
    args = parser.parse_args(argv)
    rows = []
    for act_dir in sorted(args.results.glob(f"*/*/{CLEAN}/activations")):
        dataset_name, model = act_dir.parts[-4], act_dir.parts[-3]
        first = next(iter(sorted(act_dir.glob("*.h5"))), None)
        if first is None or not (Path("resources/synthetic") / dataset_name / "index.csv").is_file():
            continue
        with store.open_h5(first, "activations") as f:
            layers = store.read_attrs(f)["layers"]
        for layer in layers:
            rows.append(
                compare(args.results, dataset_name, model, layer, args.quantile, args.denominator, args.iou_threshold)
            )
            print(rows[-1], file=sys.stderr)
    frame = pd.DataFrame(rows)
    store.write_csv(args.out, frame)
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
