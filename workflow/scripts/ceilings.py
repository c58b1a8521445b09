"""Rule ceilings: results/<dataset>/ceilings.csv, the ideal-unit IoU of every concept at each
map size of the dataset's dissected layers."""

from pathlib import Path

from advdissect.joblog import log_to

sm = snakemake
log_to(sm.log[0])

from advdissect.dissect import ceilings

dataset = sm.wildcards.dataset
ceilings.write_ceilings(
    sm.output.table,
    datasets={
        dataset: {
            "root": Path(sm.input.index).parent,
            "split": sm.params.split,
            "n_images": sm.params.n_images,
            "segmentations": list(sm.input.segmentations),
        }
    },
    layers=[dict(item) for item in sm.params.layers],
    quantile=float(sm.params.quantile),
    denominator=sm.params.denominator,
)
