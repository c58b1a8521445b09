"""Rule download_weights: torchvision's pretrained weights for one architecture, as a weights file."""

from advdissect.joblog import log_to
from advdissect.nets.weights import download_torchvision_weights

sm = snakemake
log_to(sm.log[0])
download_torchvision_weights(sm.params.arch, sm.params.weights, sm.output.weights)
