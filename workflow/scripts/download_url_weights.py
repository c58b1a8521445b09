"""Rule download_url_weights: a model's weights file from its `weights.url`."""

from advdissect import specs
from advdissect.joblog import log_to
from advdissect.nets.models import download_url_weights

sm = snakemake
log_to(sm.log[0])
# The spec (and its pinned sha256) comes from the config, not from params, so that pinning the
# digest of a file already downloaded does not download it again.
download_url_weights(sm.params.url, sm.output.weights, specs.model_spec(sm.config, sm.wildcards.model))
