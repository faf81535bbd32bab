"""Tile layouts for dense prediction, mirror-padded reads, and blending weights.

Two layouts, one per network family:

* **Valid nets** (:func:`valid_layout`): exact overlap-tile. Output tiles of shape ``T_out``
  are laid edge to edge (step = ``T_out`` rounded down to the net's lattice, so every tile sits
  on the pooling grid of one pass over the whole volume); each reads its input
  ``T_in = T_out + 2 * margin`` from the mirror-padded volume. The result equals one pass of
  the net over the whole mirror-padded volume (no seams, no blending).
* **Same nets** (:func:`same_layout`): overlapping tiles at MONAI's scan positions
  (``step = int(T * (1 - overlap))``, last tile flush with the border) blended with MONAI's
  Gaussian importance map (sigma = 0.125 * T, clamped away from zero), so results match
  ``monai.inferers.sliding_window_inference`` up to float rounding.

Coordinates are (z, y, x) voxel indices of the source image; "padded" reads outside the image
mirror it (``reflect``: ..., 2, 1, | 0, 1, 2, ..., n-1, | n-2, ...).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Tile:
    """One tile: where its input is read and where its output lands (source coordinates).

    Attributes:
        in_start: (z, y, x) source index of the tile input's first voxel (may be negative or
            reach past the image: those voxels are mirrored).
        out_start: (z, y, x) source index of the tile output's first voxel.
        write: three slices into the tile output selecting the voxels kept (cropped to the
            requested region).
        dest: three slices of the requested region (relative to its start) they go to.
    """

    in_start: Shape3
    out_start: Shape3
    write: tuple[slice, slice, slice]
    dest: tuple[slice, slice, slice]


@dataclass(frozen=True)
class Layout:
    """A tiling of a region: tile shapes and the tiles, in z-major (MONAI) order."""

    in_shape: Shape3
    out_shape: Shape3
    tiles: list[Tile]
    blend: bool


def reflect_indices(start: int, stop: int, size: int) -> np.ndarray:
    """Source indices of positions ``start..stop-1`` on an axis of length ``size``, mirrored.

    Mirroring without repeating the border voxel (numpy's ``reflect``); repeats as often as
    needed, so pads larger than the axis work. An axis of length 1 repeats its voxel.
    """
    idx = np.arange(start, stop)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= size, period - idx, idx)


def read_region(image: Any, start: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Read a (C, *shape) block of a (C, Z, Y, X) array at ``start``, mirroring outside it.

    Works on numpy, zarr and dask arrays: only the bounding box of the needed source voxels
    is read (one slice per axis), then mirrored indices are gathered in memory.

    Returns:
        numpy array (C, *shape) with the image's dtype.
    """
    src_shape = image.shape[1:]
    inside = all(s >= 0 and s + n <= size for s, n, size in zip(start, shape, src_shape, strict=True))
    if inside:
        box = (slice(None),) + tuple(slice(s, s + n) for s, n in zip(start, shape, strict=True))
        return np.asarray(image[box])
    idx = [reflect_indices(s, s + n, size) for s, n, size in zip(start, shape, src_shape, strict=True)]
    box = (slice(None),) + tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    block = np.asarray(image[box])
    rel = [i - i.min() for i in idx]
    return block[np.ix_(range(block.shape[0]), *rel)]


def _region_slices(starts: Sequence[int], size: int, region: tuple[int, int]):
    """(kept slice in tile output, destination slice) per output start on one axis."""
    lo, hi = region
    out = []
    for s in starts:
        a, b = max(s, lo), min(s + size, hi)
        out.append((slice(a - s, b - s), slice(a - lo, b - lo)))
    return out


def _make_tiles(in_starts, out_starts, out_shape, region) -> list[Tile]:
    per_axis = [
        list(zip(ins, outs, _region_slices(outs, n, reg), strict=True))
        for ins, outs, n, reg in zip(in_starts, out_starts, out_shape, region, strict=True)
    ]
    tiles = []
    for (iz, oz, (wz, dz)), (iy, oy, (wy, dy)), (ix, ox, (wx, dx)) in itertools.product(*per_axis):
        tiles.append(Tile((iz, iy, ix), (oz, oy, ox), (wz, wy, wx), (dz, dy, dx)))
    return tiles


def valid_layout(
    region: Sequence[tuple[int, int]],
    in_shape: Shape3,
    out_shape: Shape3,
    margin: Shape3,
    lattice: Shape3,
) -> Layout:
    """Exact overlap-tile layout of a valid-convolution net over ``region``.

    Args:
        region: per axis ``(start, stop)`` of the output box wanted (source coordinates).
        in_shape: tile input (Z, Y, X), accepted by the net.
        out_shape: the net's output (Z, Y, X) for ``in_shape``.
        margin: voxels lost per side (z, y, x); output voxel i sits on input voxel i + margin.
        lattice: (z, y, x) grid on which the net is shift-equivariant; tile origins are
            multiples of it (relative to a whole-volume pass starting at -margin).

    Returns:
        Layout whose tiles cover the region edge to edge (``blend`` False).
    """
    in_starts, out_starts = [], []
    for (lo, hi), t_out, m, p in zip(region, out_shape, margin, lattice, strict=True):
        step = max(p, (t_out // p) * p)
        first = (lo // p) * p  # keep the phase of a whole-volume pass
        n = max(1, math.ceil((hi - first) / step))
        outs = [first + k * step for k in range(n)]
        out_starts.append(outs)
        in_starts.append([o - m for o in outs])
    tiles = _make_tiles(in_starts, out_starts, out_shape, region)
    return Layout(tuple(in_shape), tuple(out_shape), tiles, blend=False)


def scan_starts(size: int, tile: int, overlap: float) -> list[int]:
    """MONAI's window starts on one axis (``dense_patch_slices`` with ``_get_scan_interval``).

    ``size`` must be >= ``tile``.
    """
    if tile == size:
        return [0]
    interval = max(1, int(tile * (1.0 - overlap)))
    num = math.ceil(size / interval)
    count = next((d + 1 for d in range(num) if d * interval + tile >= size), 1)
    return [k * interval - max(k * interval + tile - size, 0) for k in range(count)]


def same_layout(
    region: Sequence[tuple[int, int]],
    tile_shape: Shape3,
    overlap: Sequence[float],
    image_shape: Shape3,
    whole_image: bool = False,
) -> Layout:
    """Blended layout of a same-padding net over ``region`` (MONAI scan positions).

    Where the region is smaller than the tile, the tile is centred on it (reading real image
    context around it where there is some, mirrored voxels beyond the image border) - as
    MONAI pads a too-small image symmetrically.

    Args:
        region: per axis ``(start, stop)`` of the output box (source coordinates).
        tile_shape: tile (Z, Y, X) accepted by the net.
        overlap: fraction of the tile shared by neighbours, per axis, in [0, 1).
        image_shape: the whole image (Z, Y, X) (to keep small-region tiles inside it).
        whole_image: lay the tiles out over the whole image and keep those touching
            ``region`` (a block of a whole-image prediction, blended exactly as in it).
    """
    if whole_image:
        full = same_layout([(0, n) for n in image_shape], tile_shape, overlap, image_shape)
        axes = [sorted({t.in_start[a] for t in full.tiles}) for a in range(3)]
        in_starts = [[s for s in starts if s < hi and s + t > lo]
                     for starts, (lo, hi), t in zip(axes, region, tile_shape, strict=True)]
        return Layout(tuple(tile_shape), tuple(tile_shape),
                      _make_tiles(in_starts, in_starts, tile_shape, region), blend=True)
    in_starts = []
    for (lo, hi), t, ov, full in zip(region, tile_shape, overlap, image_shape, strict=True):
        size = hi - lo
        if size >= t:
            in_starts.append([lo + s for s in scan_starts(size, t, ov)])
        else:
            start = lo - (t - size) // 2
            if full >= t:  # real context available: stay inside the image
                start = min(max(start, 0), full - t)
            in_starts.append([start])
    tiles = _make_tiles(in_starts, in_starts, tile_shape, region)
    return Layout(tuple(tile_shape), tuple(tile_shape), tiles, blend=True)


def gaussian_weights(shape: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's Gaussian importance map (``compute_importance_map``), float32 (Z, Y, X).

    Separable Gaussian with sigma = ``sigma_scale`` * tile size per axis, peak 1, clamped from
    below at ``max(min, 1e-3)`` so that it never reaches zero.
    """
    import torch  # same float32 arithmetic as MONAI, bit for bit

    weights = None
    for i, n in enumerate(shape):
        sigma = n * sigma_scale
        x = torch.arange(start=-(n - 1) / 2.0, end=(n - 1) / 2.0 + 1, dtype=torch.float)
        x = torch.exp(x**2 / (-2 * sigma**2))
        weights = x if i == 0 else weights.unsqueeze(-1) * x[(None,) * i]
    floor = max(float(weights.min()), 1e-3)
    return torch.clamp(weights, min=floor).numpy()
