"""Where tiled predictions go: probabilities written straight (valid nets) or blended (same nets).

Shapes: ``out`` (K, Z, Y, X) over the predicted region (numpy, zarr, ... float32 / float16);
tile logits (K, z, y, x) torch tensors on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch

from . import tiling


def _to_out(out: Any, key: tuple, probs: torch.Tensor) -> None:
    out[key] = probs.numpy().astype(out.dtype, copy=False)


class _DirectSink:
    """Valid nets: each output voxel comes from exactly one tile; write probabilities."""

    def __init__(self, out: Any) -> None:
        self.out = out

    def add(self, tile: tiling.Tile, logits: torch.Tensor) -> None:
        with torch.inference_mode():
            probs = torch.softmax(logits[(slice(None), *tile.write)], 0)
        _to_out(self.out, (slice(None), *tile.dest), probs)

    def close(self) -> None:
        pass


class _BlendSink:
    """Same nets: Gaussian-weighted logits accumulated in a slab of one tile row.

    Tiles arrive in z-major order, so when a tile starts at region row z0, every row above z0
    is final: it is normalised, soft-maxed and written to ``out``, and the slab moves down.
    Arithmetic runs in torch (multi-threaded) on CPU tensors.
    """

    def __init__(self, out: Any, region, layout: tiling.Layout) -> None:
        self.out = out
        k = out.shape[0]
        ry, rx = (region[1][1] - region[1][0]), (region[2][1] - region[2][0])
        self.depth = min(layout.in_shape[0], region[0][1] - region[0][0])
        self.acc = torch.zeros((k, self.depth, ry, rx), dtype=torch.float32)
        self.wsum = torch.zeros((self.depth, ry, rx), dtype=torch.float32)
        self.z0 = 0  # region row held in slab row 0
        self.zend = region[0][1] - region[0][0]
        self.weights = torch.from_numpy(tiling.gaussian_weights(layout.in_shape))

    def _flush(self, upto: int) -> None:
        n = min(upto, self.zend, self.z0 + self.depth) - self.z0
        if n <= 0:
            return
        with torch.inference_mode():
            probs = torch.softmax(self.acc[:, :n] / self.wsum[:n].clamp_min(1e-12), 0)
            _to_out(self.out, (slice(None), slice(self.z0, self.z0 + n)), probs)
            keep = self.depth - n
            if keep > 0:
                self.acc[:, :keep] = self.acc[:, n:].clone()
                self.wsum[:keep] = self.wsum[n:].clone()
            self.acc[:, keep:] = 0
            self.wsum[keep:] = 0
        self.z0 += n

    def add(self, tile: tiling.Tile, logits: torch.Tensor) -> None:
        dz, dy, dx = tile.dest
        self._flush(dz.start)
        rows = slice(dz.start - self.z0, dz.stop - self.z0)
        with torch.inference_mode():
            w = self.weights[tile.write]
            self.acc[:, rows, dy, dx].addcmul_(logits[(slice(None), *tile.write)], w)
            self.wsum[rows, dy, dx] += w

    def close(self) -> None:
        self._flush(self.zend)
