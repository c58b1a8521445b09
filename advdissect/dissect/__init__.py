"""Network Dissection: activations, thresholds, unit masks, IoU counts, bootstrap, drift, ablation, ceilings."""
