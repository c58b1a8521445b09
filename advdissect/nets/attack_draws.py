"""Each attacked image's random draws, from a generator of its own keyed by (seed, dataset row).

An image's noise signs, PGD start, random target, APGD and FAB starts and Square search do not
depend on which batch or shard it falls in, so neither does the attacked image.
"""

from __future__ import annotations

import numpy as np
import torch

from ..specs import AttackSpec
from .attacks import random_signs, target_ranks


def image_generator(seed: int, row: int) -> torch.Generator:
    """A CPU generator seeded from (seed, dataset row): each image's randomness is its own,
    so an attacked image does not depend on which shard or batch it falls in."""
    state = np.random.SeedSequence([int(seed), int(row)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def per_image_draws(spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, k: int):
    """Noise signs or PGD grid offsets (one tensor shaped like the images) and random-target
    uniforms (one per image), each image drawn from `image_generator(spec.seed, row)`."""
    per_pixel = spec.method in ("noise", "pgd")
    random_target = spec.targeted and spec.target == "random"
    if not (per_pixel or random_target):
        return None, None
    pixel_random = torch.empty(shape, dtype=torch.int16) if per_pixel else None
    target_u = torch.empty(len(rows), dtype=torch.float64)
    for i, row in enumerate(rows):
        generator = image_generator(spec.seed, int(row))
        if spec.method == "noise":
            pixel_random[i] = random_signs(shape[1:], generator)
        elif spec.method == "pgd":
            # Uniform over the grid points of the ε-ball, so every iterate stays on the grid.
            pixel_random[i] = torch.randint(-k, k + 1, shape[1:], generator=generator, dtype=torch.int16)
        target_u[i] = torch.rand(1, generator=generator, dtype=torch.float64)[0]
    return pixel_random, (target_u if random_target else None)


def apgd_starts(spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, runs: int | None = None) -> torch.Tensor:
    """APGD's (or FAB's) start uniforms, (runs, N, C, H, W), default `spec.restarts` runs, image i's
    from `image_generator(spec.seed, rows[i])`."""
    runs = spec.restarts if runs is None else runs
    starts = torch.empty((runs, len(rows), *shape[1:]))
    for i, row in enumerate(rows):
        starts[:, i] = torch.rand((runs, *shape[1:]), generator=image_generator(spec.seed, int(row)))
    return starts


def square_draws(
    spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, queries: int, restarts: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square's uniforms (init (restarts, N, C, 1, W), steps (restarts, N, queries, 2 + C)), image
    i's from `image_generator(spec.seed, rows[i])`, restart by restart, in the order that
    torchattacks draws them for one image (so a generator seeded as torch's global one gives
    torchattacks' run)."""
    c, w = shape[1], shape[3]
    init = torch.empty((restarts, len(rows), c, 1, w))
    steps = torch.empty((restarts, len(rows), queries, 2 + c))
    for i, row in enumerate(rows):
        generator = image_generator(spec.seed, int(row))
        for r in range(restarts):
            init[r, i] = torch.rand((c, 1, w), generator=generator)
            steps[r, i] = torch.rand((queries, 2 + c), generator=generator)
    return init, steps


def autoattack_draws(spec: AttackSpec, shape: tuple[int, ...], rows: np.ndarray, n_classes: int) -> dict:
    """Each AutoAttack component's draws from `image_generator(spec.seed, row)` afresh, as the
    reference code seeds every component with the same seed."""
    return {
        "apgd-ce": apgd_starts(spec, shape, rows, 1),
        "apgd-t": apgd_starts(spec, shape, rows, len(target_ranks(n_classes, spec.targets))),
        "square": square_draws(spec, shape, rows, spec.queries, 1),
    }
