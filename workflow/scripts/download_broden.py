"""Rule download_broden: fetch the real Broden dataset whose index.csv is the output."""

from pathlib import Path

from advdissect.download import download_broden
from advdissect.joblog import log_to

log_to(snakemake.log[0])  # noqa: F821 (injected by Snakemake)

download_broden(snakemake.params.variant, Path(snakemake.output.index).parent)  # noqa: F821
