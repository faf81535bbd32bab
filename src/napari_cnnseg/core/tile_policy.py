"""The one tile policy of tiled prediction: tile shape, overlap, batch size, OOM shrinking.

Shapes are (Z, Y, X) tile inputs in voxels; ``spec`` is the net's shape protocol
(``core.netprep.NetSpec``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .netprep import NetSpec

#: default tile edge (input voxels per axis) on CPU and GPU
DEFAULT_TILE = 96
#: valid nets: default tile output edge (the tile input adds 2 * margin)
DEFAULT_VALID_OUTPUT = 80
#: default overlap of blended (same-padding) tiles, fraction of the tile
DEFAULT_OVERLAP = 0.25


def default_tile_shape(spec: NetSpec, region_shape: Sequence[int],
                       tile_shape: Sequence[int] | int | None = None) -> tuple[int, int, int]:
    """Tile input shape (Z, Y, X) the net accepts: the requested one, or the default.

    Default: 96^3 for same nets; for valid nets outputs of at least ``max(96 - 2 * margin, 80)``
    per axis (so that a net losing 44 voxels per side still gets >= 80^3 outputs per tile),
    evened out over the tiles the region needs (160 voxels -> 2 tiles of 80, not 68 + 68 + 24). Never
    larger than needed to cover ``region_shape`` in one tile; for valid nets the tile output is
    at least one lattice step.
    """
    m, p = spec.margin, spec.lattice
    if tile_shape is None and spec.padding == "valid":
        # big enough that most of the tile is output; then as few tiles as that needs, evened
        # out so that the last one is not mostly wasted
        req = []
        for n, mi, pi in zip(region_shape, m, p, strict=True):
            target = max(DEFAULT_TILE - 2 * mi, DEFAULT_VALID_OUTPUT)
            count = max(1, math.ceil(n / target))
            out_edge = -(-math.ceil(n / count) // pi) * pi
            req.append(out_edge + 2 * mi)
        req = tuple(req)
    elif tile_shape is None:
        req = (DEFAULT_TILE,) * 3
    elif isinstance(tile_shape, (int, np.integer)):
        req = (int(tile_shape),) * 3
    else:
        req = tuple(int(t) for t in tile_shape)
    if len(req) != 3 or min(req) < 1:
        raise InputError(f"tile shape must be 3 positive integers (z, y, x), got {tile_shape!r}")
    if spec.padding == "valid":
        lo = spec.valid_input_shape([2 * mi + pi for mi, pi in zip(m, p, strict=True)])
        need = spec.valid_input_shape([n + 2 * mi for n, mi in zip(region_shape, m, strict=True)])
        want = spec.valid_input_shape([max(r, low) for r, low in zip(req, lo, strict=True)])
    else:
        need = spec.valid_input_shape(region_shape)
        want = spec.valid_input_shape(req)
    return tuple(min(w, n) for w, n in zip(want, need, strict=True))  # type: ignore[return-value]


#: more tiles than this in one prediction gets a warning (tiles far below the default size)
MANY_TILES = 2000


def overlap3(overlap: Any) -> tuple[float, float, float]:
    ov = DEFAULT_OVERLAP if overlap is None else overlap
    ov = (float(ov),) * 3 if isinstance(ov, (int, float)) else tuple(float(o) for o in ov)
    if len(ov) != 3 or not all(0.0 <= o < 1.0 for o in ov):
        raise InputError(f"overlap must be in [0, 1) (fraction of the tile), got {overlap!r}")
    return ov  # type: ignore[return-value]


def default_batch(n_tiles: int, tile_in: Sequence[int], device: torch.device) -> int:
    vox = math.prod(tile_in)
    cap = 4 if vox <= 96**3 else (2 if vox <= 144**3 else 1)
    if device.type != "cpu":
        cap = max(1, min(8, (8 * 96**3) // max(vox, 1)))
    return max(1, min(n_tiles, cap))


def shrink_tile(spec: NetSpec, tile: Sequence[int]) -> tuple[int, int, int] | None:
    if spec.padding == "valid":
        lo = spec.valid_input_shape([2 * m + p for m, p in zip(spec.margin, spec.lattice, strict=True)])
    else:
        lo = spec.valid_input_shape((16, 16, 16))
    half = spec.valid_input_shape([max(low, t // 2) for low, t in zip(lo, tile, strict=True)])
    half = tuple(min(h, t) for h, t in zip(half, tile, strict=True))
    return None if tuple(half) == tuple(tile) else half  # type: ignore[return-value]
