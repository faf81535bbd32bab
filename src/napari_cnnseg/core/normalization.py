"""Intensity normalisation shared by inference and training.

A normalisation is described by a small JSON-able dict stored in model checkpoints
(``meta["normalization"]``), so that a model always sees inputs scaled as in training:

* ``{"mode": "percentile", "low": 1.0, "high": 99.0}`` (default): per channel, map the
  ``low``/``high`` percentiles of the volume to 0 and 1 (robust to outliers; works for MRI,
  microscopy and CT windows alike). Values outside are kept (not clipped).
* ``{"mode": "zscore"}``: per channel, subtract the mean and divide by the std.
* ``{"mode": "fixed", "offset": a, "scale": b}``: ``(x - a) / b`` (e.g. CT in HU).
* ``{"mode": "none"}``: cast to float32 only.

Statistics are computed on a strided subsample of at most ~2 M voxels, so they cost
milliseconds on large volumes and work on lazy (zarr/dask) arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

DEFAULT_NORMALIZATION: dict[str, Any] = {"mode": "percentile", "low": 1.0, "high": 99.0}
_MODES = ("percentile", "zscore", "fixed", "none")
_MAX_SAMPLE = 2_000_000


def _subsample(image: Any, channel: int | None = None) -> np.ndarray:
    """Strided subsample (Z, Y, X) of at most ~_MAX_SAMPLE voxels, as float64.

    ``channel`` picks one channel of a (C, Z, Y, X) image in the same read, so a lazy
    (zarr) image never loads a whole channel.
    """
    size = int(np.prod(image.shape[-3:]))
    step = max(1, int(np.ceil((size / _MAX_SAMPLE) ** (1.0 / 3.0))))
    strided = (slice(None, None, step),) * 3
    key = strided if channel is None else (channel, *strided)
    return np.asarray(image[key], dtype=np.float64)


def _check_spec(spec: dict[str, Any] | None) -> dict[str, Any]:
    spec = dict(DEFAULT_NORMALIZATION if spec is None else spec)
    mode = spec.get("mode")
    if mode not in _MODES:
        raise InputError(
            f"unknown normalization mode {mode!r}; choose one of {', '.join(_MODES)}"
        )
    return spec


def compute_stats(image: Any, spec: dict[str, Any] | None = None) -> list[tuple[float, float]]:
    """Per-channel ``(offset, scale)`` so that ``(x - offset) / scale`` is normalised.

    Args:
        image: array (Z, Y, X) or (C, Z, Y, X); numpy, zarr or dask.
        spec: normalisation dict (see module docstring); None means the default.

    Returns:
        One ``(offset, scale)`` pair per channel; ``scale`` is never 0.
    """
    spec = _check_spec(spec)
    channels = [None] if image.ndim == 3 else list(range(image.shape[0]))
    stats: list[tuple[float, float]] = []
    for ch in channels:
        mode = spec["mode"]
        if mode == "none":
            offset, scale = 0.0, 1.0
        elif mode == "fixed":
            offset, scale = float(spec.get("offset", 0.0)), float(spec.get("scale", 1.0))
        else:
            sample = _subsample(image, ch)
            sample = sample[np.isfinite(sample)]
            if sample.size == 0:
                offset, scale = 0.0, 1.0
            elif mode == "zscore":
                offset, scale = float(sample.mean()), float(sample.std())
            else:
                lo, hi = np.percentile(sample, [spec.get("low", 1.0), spec.get("high", 99.0)])
                if hi <= lo:  # nearly constant image or sparse: fall back to min/max
                    lo, hi = float(sample.min()), float(sample.max())
                offset, scale = float(lo), float(hi - lo)
        if not np.isfinite(scale) or scale <= 1e-12:
            scale = 1.0
        stats.append((offset, scale))
    return stats


def apply_stats(block: np.ndarray, stats: list[tuple[float, float]]) -> np.ndarray:
    """Normalise a block (Z, Y, X) or (C, Z, Y, X) with precomputed per-channel stats.

    Returns:
        float32 array of the same shape.
    """
    out = np.array(block, dtype=np.float32)  # one new float32 array (asarray + copy made two)
    if out.ndim == 3:
        offset, scale = stats[0]
        out -= offset
        out /= scale
        return out
    for c, (offset, scale) in enumerate(stats):
        out[c] -= offset
        out[c] /= scale
    return out


def normalize(image: Any, spec: dict[str, Any] | None = None) -> np.ndarray:
    """Normalise a whole in-memory volume; returns float32 with the input's shape."""
    return apply_stats(np.asarray(image), compute_stats(image, spec))
