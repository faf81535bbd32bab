"""Simulated user strokes for the scribble benchmark.

A simulated user paints thin (1 voxel wide) straight strokes on 2D slices across the
thickest-slice axis (the axis with the largest spacing, Z for isotropic volumes):

* round 1 (:func:`initial_strokes`): a few strokes inside every class on a few slices spread
  over the labelled extent;
* later rounds (:func:`correction_strokes`): strokes inside the largest connected error
  regions of the current prediction, painted with the true class there, as a user would
  correct the most visible mistakes.

Strokes stay one voxel away from class borders (2D erosion), like a careful user.
Stroke lengths scale with the slice size, so no setting depends on the dataset.
Scribble values follow the package convention: 0 = unlabelled, k = class k-1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: stroke length as a fraction of the slice's larger side (min 5 voxels)
STROKE_FRACTION = 0.15


def paint_axis(spacing: tuple[float, float, float]) -> int:
    """Axis a user scrolls through: the one with the largest spacing (0 = Z on ties)."""
    return int(np.argmax(np.asarray(spacing, dtype=float)))


def _stroke_in_mask(mask2d: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
    """Coordinates (P, 2) of a straight 1-voxel stroke inside a 2D mask (empty if none)."""
    inner = ndimage.binary_erosion(mask2d)
    region = inner if inner.any() else mask2d
    pts = np.argwhere(region)
    if len(pts) == 0:
        return np.zeros((0, 2), int)
    start = pts[rng.integers(len(pts))].astype(float)
    best = start[None].astype(int)
    for _ in range(8):  # try a few directions; keep the longest run inside the region
        angle = rng.uniform(0, np.pi)
        d = np.array([np.sin(angle), np.cos(angle)])
        run = [start.astype(int)]
        for sign in (1, -1):
            for t in range(1, length):
                p = np.round(start + sign * t * d).astype(int)
                if (p < 0).any() or (p >= region.shape).any() or not region[tuple(p)]:
                    break
                if sign == 1:
                    run.append(p)
                else:
                    run.insert(0, p)
                if len(run) >= length:
                    break
        if len(run) > len(best):
            best = np.array(run)
        if len(best) >= length:
            break
    return np.unique(np.asarray(best), axis=0)


def _paint(scribbles: np.ndarray, axis: int, index: int, pts2d: np.ndarray, value: int) -> int:
    sl = np.moveaxis(scribbles, axis, 0)[index]
    before = int((sl == value).sum())
    sl[pts2d[:, 0], pts2d[:, 1]] = value
    return int((sl == value).sum()) - before


def _stroke_length(shape2d: tuple[int, int]) -> int:
    return max(5, int(round(STROKE_FRACTION * max(shape2d))))


def initial_strokes(labels: np.ndarray, spacing: tuple[float, float, float], *,
                    num_slices: int = 3, strokes_per_class: int = 2,
                    seed: int = 0) -> np.ndarray:
    """Round-1 scribbles: ``strokes_per_class`` strokes per class on ``num_slices`` slices.

    Args:
        labels: ground truth (Z, Y, X), class indices 0..K-1.
        spacing: voxel size (z, y, x), picks the painting axis.
        num_slices: slices painted, spread over the extent that holds foreground.
        strokes_per_class: strokes per class present on a slice.
        seed: random seed.

    Returns:
        int64 scribbles (Z, Y, X): 0 = unlabelled, k = class k-1.
    """
    rng = np.random.default_rng(seed)
    axis = paint_axis(spacing)
    lab = np.moveaxis(labels, axis, 0)
    fg_slices = np.flatnonzero((lab > 0).reshape(lab.shape[0], -1).any(1))
    if len(fg_slices) == 0:
        fg_slices = np.arange(lab.shape[0])
    qs = np.linspace(0, 1, num_slices + 2)[1:-1]
    picks = sorted({int(fg_slices[int(round(q * (len(fg_slices) - 1)))]) for q in qs})
    scribbles = np.zeros(labels.shape, np.int64)
    length = _stroke_length(lab.shape[1:])
    for s in picks:
        for c in np.unique(lab[s]):
            for _ in range(strokes_per_class):
                pts = _stroke_in_mask(lab[s] == c, rng, length)
                if len(pts):
                    _paint(scribbles, axis, s, pts, int(c) + 1)
    return scribbles


def correction_strokes(labels: np.ndarray, prediction: np.ndarray, scribbles: np.ndarray,
                       spacing: tuple[float, float, float], *, regions_per_class: int = 2,
                       strokes_per_region: int = 2, seed: int = 0) -> np.ndarray:
    """Add strokes inside the largest errors of ``prediction`` (returns a new array).

    For every class c, the error regions "truly c but predicted otherwise" are split into
    3D connected components; in each of the ``regions_per_class`` largest ones the user
    paints ``strokes_per_region`` strokes of class c on the slice where the region is widest.
    Together over all classes this covers false negatives and false positives.
    """
    rng = np.random.default_rng(seed)
    axis = paint_axis(spacing)
    out = scribbles.copy()
    length = _stroke_length(tuple(np.delete(labels.shape, axis)))
    for c in np.unique(labels):
        err = (labels == c) & (prediction != c) & (scribbles == 0)
        if not err.any():
            continue
        comp, n = ndimage.label(err)
        sizes = np.bincount(comp.ravel())[1:]
        for idx in np.argsort(sizes)[::-1][:regions_per_class]:
            region = np.moveaxis(comp == idx + 1, axis, 0)
            s = int(np.argmax(region.reshape(region.shape[0], -1).sum(1)))
            for _ in range(strokes_per_region):
                pts = _stroke_in_mask(region[s], rng, length)
                if len(pts):
                    _paint(out, axis, s, pts, int(c) + 1)
    return out
