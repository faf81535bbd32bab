"""A simulated user who paints like a clinician (``bench_scribbles.py --user clinician``).

Strokes are painted on 2D slices across the thickest-slice axis (the axis a user scrolls
through: the largest spacing, Z for isotropic volumes). A stroke on a region is what a brush
leaves when it is dragged along the middle of that region: up to 150 random points of the 2D
skeleton of the region eroded by 2 voxels (the region itself where the erosion is empty),
dilated by 1 voxel in-plane and clipped to the region.

* Round 1 (:func:`initial_strokes`), for each foreground class c: 3 random slices through c
  get a stroke inside c and, in a band 1-6 voxels around c, a stroke of the true class there
  (the background ring a clinician draws around a lesion); 3 more random slices get strokes in
  the true classes of the voxels at least 20 voxels away from c.
* Later rounds (:func:`correction_strokes`), for each class c: the 3 slices with the most
  unpainted voxels that truly are c but are predicted otherwise get a stroke of c inside that
  error region. Each method is corrected on its own mistakes. A user told where to paint
  (``slices=``, e.g. the suggestions of ``core.suggest``, ``bench_suggest.py``) corrects the
  errors of every class on those slices instead.

Seeded and deterministic. Scribble values follow the package convention: 0 = unlabelled,
k = class k-1. Shapes are (Z, Y, X).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

#: the numbers of the protocol (issue 14): slices per class, points per stroke, band, distance
SLICES = 3
POINTS = 150
BAND = (1, 6)
FAR = 20


def paint_axis(spacing: tuple[float, float, float]) -> int:
    """Axis a user scrolls through: the one with the largest spacing (0 = Z on ties)."""
    return int(np.argmax(np.asarray(spacing, dtype=float)))


def stroke(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Boolean 2D mask of one clinician stroke inside ``region`` (empty if the region is)."""
    if not region.any():
        return np.zeros_like(region, bool)
    inner = ndimage.binary_erosion(region, iterations=2)
    skel = skeletonize(inner if inner.any() else region)
    pts = np.argwhere(skel)
    if len(pts) > POINTS:
        pts = pts[rng.choice(len(pts), POINTS, replace=False)]
    out = np.zeros_like(region, bool)
    out[pts[:, 0], pts[:, 1]] = True
    return ndimage.binary_dilation(out, structure=np.ones((3, 3), bool)) & region


def _paint(scribbles2d: np.ndarray, labels2d: np.ndarray, region: np.ndarray,
           rng: np.random.Generator) -> None:
    """Paint a stroke of each true class inside ``region`` (only on unpainted voxels)."""
    for c in np.unique(labels2d[region]):
        mask = stroke(region & (labels2d == c), rng) & (scribbles2d == 0)
        scribbles2d[mask] = int(c) + 1


def _random_slices(candidates: np.ndarray, rng: np.random.Generator, n: int) -> list[int]:
    if len(candidates) == 0:
        return []
    pick = rng.choice(len(candidates), min(n, len(candidates)), replace=False)
    return sorted(int(candidates[i]) for i in pick)


def initial_strokes(labels: np.ndarray, spacing: tuple[float, float, float], *,
                    seed: int = 0) -> np.ndarray:
    """Round-1 scribbles (Z, Y, X) int64 for ground truth ``labels`` (classes 0..K-1)."""
    rng = np.random.default_rng(seed)
    axis = paint_axis(spacing)
    lab = np.moveaxis(labels, axis, 0)
    scribbles = np.zeros(labels.shape, np.int64)
    scr = np.moveaxis(scribbles, axis, 0)  # a view: painting it paints ``scribbles``
    for c in np.unique(lab):
        if c == 0:
            continue
        obj = lab == c
        through = np.flatnonzero(obj.reshape(obj.shape[0], -1).any(1))
        for s in _random_slices(through, rng, SLICES):
            _paint(scr[s], lab[s], obj[s], rng)
            dist = ndimage.distance_transform_edt(~obj[s])
            _paint(scr[s], lab[s], (dist >= BAND[0]) & (dist <= BAND[1]), rng)
        far = ndimage.distance_transform_edt(~obj) >= FAR
        if not far.any():
            continue
        has_far = np.flatnonzero(far.reshape(far.shape[0], -1).any(1))
        for s in _random_slices(has_far, rng, SLICES):
            _paint(scr[s], lab[s], far[s], rng)
    return scribbles


def correction_strokes(labels: np.ndarray, prediction: np.ndarray, scribbles: np.ndarray,
                       spacing: tuple[float, float, float], *, seed: int = 0,
                       slices: Sequence[int] | Mapping[int, Sequence[int]] | None = None
                       ) -> np.ndarray:
    """Scribbles after one more round: strokes in each class's 3 worst slices (a new array).

    Args:
        labels: ground truth (Z, Y, X), classes 0..K-1.
        prediction: the method's own label map (Z, Y, X) after the last round.
        scribbles: the scribbles so far (Z, Y, X), 0 = unlabelled, k = class k-1.
        spacing: voxel size (z, y, x) in mm, picks the painting axis.
        seed: random seed.
        slices: slice indices along the painting axis to correct instead of each class's 3
            worst (the user does not know where the errors are and follows these): every class
            with errors on such a slice gets a stroke there; or a mapping class -> slices to
            correct that class on (a class not in it gets none).
    """
    rng = np.random.default_rng(seed)
    axis = paint_axis(spacing)
    out = scribbles.copy()
    lab = np.moveaxis(labels, axis, 0)
    pred = np.moveaxis(prediction, axis, 0)
    scr = np.moveaxis(out, axis, 0)
    for c in np.unique(lab):
        err = (lab == c) & (pred != c) & (scr == 0)
        counts = err.reshape(err.shape[0], -1).sum(1)
        if slices is None:
            order = np.argsort(-counts, kind="stable")[:SLICES]
        elif isinstance(slices, Mapping):
            order = [int(s) for s in slices.get(int(c), [])]
        else:
            order = [int(s) for s in slices]
        for s in order:
            if counts[s] == 0:
                if slices is None:
                    break
                continue
            mask = stroke(err[s], rng) & (scr[s] == 0)
            scr[s][mask] = int(c) + 1
    return out
