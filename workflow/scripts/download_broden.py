"""Rule download_broden: fetch the real Broden dataset whose index.csv is the output."""

from pathlib import Path

from advdissect.data.download import download_broden
from advdissect.joblog import log_to
from advdissect.study import config as adconfig

sm = snakemake
log_to(sm.log[0])
# Mirrors and digest come from the config, not from params: adding a mirror re-runs nothing.
sources = adconfig.broden_download(sm.config, sm.params.variant)
download_broden(sm.params.variant, Path(sm.output.index).parent, **sources)
