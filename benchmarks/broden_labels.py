"""Broden's label numbers as the benchmarks generate them: 1,198 numbers in one block per category."""

from __future__ import annotations

import numpy as np

N_LABELS = 1198
# label blocks: color 1-11, object 12-595, part 596-829, material 830-861, scene 862-1150, texture 1151-1197
BLOCKS = [(1, 12, 0), (12, 596, 1), (596, 830, 2), (830, 862, 3), (862, 1151, 4), (1151, 1198, 5)]


def label_category() -> np.ndarray:
    """(N_LABELS,) the category index of each label number, -1 for label 0."""
    cat = np.full(N_LABELS, -1, np.int64)
    for lo, hi, c in BLOCKS:
        cat[lo:hi] = c
    return cat
