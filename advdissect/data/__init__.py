"""Datasets: the Broden-format reader, label masks per shard, the generated sets, ImageFolder, downloads."""
