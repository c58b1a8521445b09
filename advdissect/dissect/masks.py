"""A unit's mask on the segmentation grid: its feature map upsampled bilinearly, above its threshold.

For an image x and unit u: S = the unit's feature map resized bilinearly to the segmentation
size (sh, sw) with align_corners=False (torch's F.interpolate(mode="bilinear")), and the mask
M_u = S > T_u. Precisely, S is computed per output pixel (i, j) as

    S = float32( wy0[i]·(wx0[j]·A[y0,x0] + wx1[j]·A[y0,x1]) + wy1[i]·(wx0[j]·A[y1,x0] + wx1[j]·A[y1,x1]) )

in float64 with torch's source indices and weights (`axis_weights`), then rounded to float32:
what F.interpolate computes on a float32 map up to its own float32 rounding, exact on constant
regions, and never above the map's maximum. T_u is the float64 threshold of
`advdissect.dissect.thresholds`. S is a convex combination of at most four cells, so a pixel can only
be active near a cell above T_u: the counting visits only those cells' tiles and columns.

This module is the one upsampler: the IoU counts (advdissect.dissect.tally), the unit pictures and the
ideal-unit ceilings all draw their masks with it.
"""

from __future__ import annotations

import numpy as np

from ..errors import ArtifactError


def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source cells (i0, i1) and weights (l0, l1), float64, of each output index along one axis.

    torch's rule for bilinear with align_corners=False and an explicit output size:
    src = max((n_in / n_out)·(i + 0.5) - 0.5, 0), i0 = floor(src), i1 = i0 + (i0 < n_in - 1),
    l1 = src - i0, l0 = 1 - l1.
    """
    if n_in < 1 or n_out < 1:
        raise ValueError(f"sizes must be positive, got {n_in} -> {n_out}")
    scale = np.float64(n_in) / np.float64(n_out)
    src = scale * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = i0 + (i0 < n_in - 1)
    l1 = np.clip(src - i0, 0.0, 1.0)
    l0 = 1.0 - l1
    return i0, i1, l0, l1


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Dense bilinear resize of maps (..., h, w) to `size`, float32, by the formula of the module doc."""
    maps = np.asarray(maps, dtype=np.float64)
    h, w = maps.shape[-2:]
    y0, y1, wy0, wy1 = axis_weights(h, size[0])
    x0, x1, wx0, wx1 = axis_weights(w, size[1])
    top = wx0 * maps[..., y0, :][..., x0] + wx1 * maps[..., y0, :][..., x1]
    bottom = wx0 * maps[..., y1, :][..., x0] + wx1 * maps[..., y1, :][..., x1]
    return (wy0[:, None] * top + wy1[:, None] * bottom).astype(np.float32)


def rounded_threshold(thresholds: np.ndarray) -> np.ndarray:
    """T' (float64) with float32(s) > T  <=>  s > T' for every float64 s.

    Lets the mask test run on the float64 values without rounding each one: t32 is the
    smallest float32 above T, m the midpoint between t32 and the float32 below it; values at m
    round to the even one of the two (round-half-to-even).
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if np.isnan(t).any():
        raise ArtifactError("thresholds contain NaN")
    with np.errstate(over="ignore"):
        t32 = t.astype(np.float32)
    t32 = np.where(t32.astype(np.float64) > t, t32, np.nextafter(t32, np.float32(np.inf)))
    p32 = np.nextafter(t32, np.float32(-np.inf))
    with np.errstate(invalid="ignore"):
        mid = (t32.astype(np.float64) + p32.astype(np.float64)) / 2.0
    even = (t32.view(np.uint32) & 1) == 0
    out = np.where(even, np.nextafter(mid, -np.inf), mid)
    out = np.where(np.isposinf(t32), np.inf, out)
    return np.where(np.isneginf(p32), -np.inf, out)


class _Bands:
    """Runs of output indices along one axis that read the same source cells (i0, i1)."""

    def __init__(self, n_in: int, n_out: int):
        i0, i1, l0, l1 = axis_weights(n_in, n_out)
        key = np.stack([i0, i1, (l1 == 0).astype(np.int64)], axis=1)
        starts = np.flatnonzero(np.r_[True, (key[1:] != key[:-1]).any(axis=1)])
        sizes = np.diff(np.r_[starts, n_out])
        self.start = starts
        self.size = sizes
        self.cell0 = i0[starts]
        self.cell1 = i1[starts]
        self.width = int(sizes.max())
        # (position in band, band), padded with NaN weights: NaN > T is False.
        self.w0 = np.full((self.width, len(starts)), np.nan)
        self.w1 = np.full((self.width, len(starts)), np.nan)
        for b, (first, size) in enumerate(zip(starts, sizes)):
            self.w0[:size, b] = l0[first : first + size]
            self.w1[:size, b] = l1[first : first + size]


class UpsamplePlan:
    """Tiles of the output grid (row band × column band), each reading a 2×2 block of cells."""

    def __init__(self, map_size: tuple[int, int], seg_size: tuple[int, int]):
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.seg_size = (int(seg_size[0]), int(seg_size[1]))
        h, w = self.map_size
        self.rows = _Bands(h, self.seg_size[0])
        self.cols = _Bands(w, self.seg_size[1])
        nby, nbx = len(self.rows.start), len(self.cols.start)
        self.n_tiles = nby * nbx
        by, bx = np.divmod(np.arange(self.n_tiles), nbx)
        self.tile_by, self.tile_bx = by, bx
        y0, y1 = self.rows.cell0[by], self.rows.cell1[by]
        x0, x1 = self.cols.cell0[bx], self.cols.cell1[bx]
        # corner cells (4, n_tiles): (y0, x0), (y0, x1), (y1, x0), (y1, x1)
        self.corners = np.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1])
        # cell -> tiles that read it, padded with -1
        pairs = np.unique(np.stack([self.corners.ravel(), np.tile(np.arange(self.n_tiles), 4)], axis=1), axis=0)
        per_cell = np.bincount(pairs[:, 0], minlength=h * w)
        slot = np.arange(len(pairs)) - np.repeat(np.cumsum(per_cell) - per_cell, per_cell)
        self.cell_tiles = np.full((h * w, max(1, int(per_cell.max()))), -1, dtype=np.int64)
        self.cell_tiles[pairs[:, 0], slot] = pairs[:, 1]
        self.tile_origin = self.rows.start[by] * self.seg_size[1] + self.cols.start[bx]


def _float32_floor(t: np.ndarray) -> np.ndarray:
    """Largest float32 <= t: for float32 a, a > t  <=>  a > floor32(t)."""
    with np.errstate(over="ignore"):
        t32 = t.astype(np.float32)
    return np.where(t32.astype(np.float64) > t, np.nextafter(t32, np.float32(-np.inf)), t32)


def active_bands(maps: np.ndarray, thresholds: np.ndarray, plan: UpsamplePlan):
    """Active pixels of maps (n, C, h, w), one row band at a time.

    Yields (pair, base, offset, mask): for candidate columns k (pair[k] = map·C + unit),
    row r of the band is active where mask[r, k]; its pixel is base[k] + offset[r] in the
    (sh, sw) grid.
    """
    n, c, h, w = maps.shape
    t = np.asarray(thresholds, dtype=np.float64)
    t_eff = rounded_threshold(t)
    flat = maps.reshape(n, c * h * w)
    # A pixel is a convex combination of its tile's corner cells and S never exceeds their
    # maximum, so only tiles with a corner above T can hold active pixels.
    hot = np.flatnonzero(flat > np.repeat(_float32_floor(t), h * w)[None, :])
    if hot.size == 0:
        return
    pair, cell = np.divmod(hot, h * w)
    tiles = plan.cell_tiles[cell]
    # candidate tiles, numbered (row band, pair, column band) so they come sorted by band
    n_bx = len(plan.cols.start)
    stride = n * c * n_bx
    keys = (plan.tile_by[tiles] * stride + (pair * n_bx)[:, None] + plan.tile_bx[tiles])[tiles >= 0]
    if len(plan.rows.start) * stride <= 64 * keys.size + (1 << 20):
        seen = np.zeros(len(plan.rows.start) * stride, dtype=bool)
        seen[keys] = True
        keys = np.flatnonzero(seen)
    else:
        keys = np.unique(keys)
    by, rest = np.divmod(keys, stride)
    ct_pair, bx = np.divmod(rest, n_bx)
    ct_tile = by * n_bx + bx
    corners = flat.reshape(-1)[ct_pair * (h * w) + plan.corners[:, ct_tile]].astype(np.float64)
    wx0, wx1 = plan.cols.w0[:, bx], plan.cols.w1[:, bx]
    r0 = (wx0 * corners[0] + wx1 * corners[1]).ravel()  # (column in band, tile), flat
    r1 = (wx0 * corners[2] + wx1 * corners[3]).ravel()
    te = t_eff[ct_pair % c]
    # Column j of a tile is a convex combination of r0[j] and r1[j]; the margin keeps this
    # test conservative against float64 rounding (the exact test follows).
    low = te - 1e-9 * (np.abs(te) + 1e-30)
    n_ct = len(keys)
    cand = (np.maximum(r0, r1).reshape(-1, n_ct) > low).T  # (tile, column): tile-major order
    tile_i, col = np.divmod(np.flatnonzero(cand), cand.shape[1])
    if tile_i.size == 0:
        return
    at = col * n_ct + tile_i
    x0, x1 = r0[at], r1[at]
    te_cc = te[tile_i]
    pair_cc = ct_pair[tile_i]
    base_cc = plan.tile_origin[ct_tile[tile_i]] + col
    bounds = np.searchsorted(by[tile_i], np.arange(len(plan.rows.start) + 1))
    sw = plan.seg_size[1]
    for band in np.flatnonzero(np.diff(bounds)):
        sl = slice(bounds[band], bounds[band + 1])
        size = plan.rows.size[band]
        w0 = plan.rows.w0[:size, band, None]
        w1 = plan.rows.w1[:size, band, None]
        mask = w0 * x0[sl] + w1 * x1[sl] > te_cc[sl]
        yield pair_cc[sl], base_cc[sl], np.arange(size) * sw, mask


def active_pixels(maps: np.ndarray, thresholds: np.ndarray, plan: UpsamplePlan) -> tuple[np.ndarray, np.ndarray]:
    """Active pixels of every (map, unit) of maps (n, C, h, w): (pair, pixel), pair = map·C + unit.

    pixel = i·sw + j in the (sh, sw) grid; in no particular order. Equals
    np.nonzero(upsample(maps) > thresholds) without computing inactive tiles and columns.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.shape[2:] != plan.map_size:
        raise ArtifactError(f"feature maps of size {maps.shape[2:]}, plan made for {plan.map_size}")
    pairs, pixels = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for pair, base, offset, mask in active_bands(maps, thresholds, plan):
        pixels.append((base[None, :] + offset[:, None])[mask])
        pairs.append(np.broadcast_to(pair, mask.shape)[mask])
    return np.concatenate(pairs), np.concatenate(pixels)
