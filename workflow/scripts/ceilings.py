"""Rule ceilings: results/summary/ceilings.csv, the ideal-unit IoU of every concept per dissected layer."""

from pathlib import Path

from advdissect.joblog import log_to

sm = snakemake  # noqa: F821 (injected by Snakemake)
log_to(sm.log[0])

from advdissect import ceilings  # noqa: E402

# params.datasets and input.indexes list the same datasets in the same order.
datasets = {
    spec["name"]: {
        "root": Path(index).parent,
        "split": spec["split"],
        "n_images": spec["n_images"],
        "segmentations": list(sm.input[f"segmentations_{spec['name']}"]),
    }
    for spec, index in zip(sm.params.datasets, list(sm.input.indexes), strict=True)
}
ceilings.write_ceilings(
    sm.output.table,
    datasets=datasets,
    layers=[dict(item) for item in sm.params.layers],
    quantile=float(sm.params.quantile),
    denominator=sm.params.denominator,
)
