"""Overlap and surface-distance metrics between label maps.

Label maps hold class indices 0..K-1 (0 = background) on one (Z, Y, X) grid. Every metric
returns a dict ``{class_index: value}`` over the classes ``0..K-1``.

Conventions (the same as MONAI's defaults where one exists):

* Dice of a class absent from both maps is 1.0 (nothing to find, nothing found).
* The 95% Hausdorff distance is ``max(p95(d(pred -> gt)), p95(d(gt -> pred)))`` over the
  surface voxels of each mask, in physical units of ``spacing`` (e.g. mm). It is 0.0 when a
  class is absent from both maps and ``inf`` when it is absent from exactly one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "resample one onto the other's grid first"
        )
    for name, arr in (("prediction", pred), ("ground truth", gt)):
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            if not np.array_equal(arr, np.round(arr)):
                raise InputError(
                    f"{name} holds non-integer values (dtype {arr.dtype}); pass a label map "
                    "of class indices, not probabilities"
                )
        if arr.size and arr.min() < 0:
            raise InputError(f"{name} holds negative labels; class indices start at 0")
    return pred.astype(np.int64, copy=False), gt.astype(np.int64, copy=False)


def _num_classes(pred: np.ndarray, gt: np.ndarray, num_classes: int | None) -> int:
    found = int(max(pred.max(initial=0), gt.max(initial=0))) + 1
    if num_classes is None:
        return found
    if num_classes < found:
        raise InputError(
            f"labels go up to {found - 1} but num_classes={num_classes}; "
            f"pass num_classes >= {found} or None"
        )
    return int(num_classes)


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Voxel counts ``cm[g, p]`` of ground-truth class g predicted as class p.

    Args:
        pred: label map (Z, Y, X) of class indices.
        gt: label map of the same shape.
        num_classes: K; None means ``max label + 1``.

    Returns:
        int64 array (K, K).
    """
    pred, gt = _check_pair(pred, gt)
    k = _num_classes(pred, gt, num_classes)
    return np.bincount(gt.ravel() * k + pred.ravel(), minlength=k * k).reshape(k, k)


def dice_per_class(
    pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None
) -> dict[int, float]:
    """Dice overlap ``2|P∩G| / (|P| + |G|)`` of every class 0..K-1.

    Args:
        pred: predicted label map (Z, Y, X) (any shape works) of class indices.
        gt: ground-truth label map of the same shape.
        num_classes: K; None means ``max label in either map + 1``.

    Returns:
        ``{class: dice}`` in [0, 1]; 1.0 for a class absent from both maps.
    """
    cm = confusion_matrix(pred, gt, num_classes)
    inter = np.diag(cm).astype(np.float64)
    sizes = cm.sum(axis=0) + cm.sum(axis=1)
    out: dict[int, float] = {}
    for c in range(cm.shape[0]):
        out[c] = 1.0 if sizes[c] == 0 else float(2.0 * inter[c] / sizes[c])
    return out


def mean_foreground_dice(pred: np.ndarray, gt: np.ndarray, num_classes: int | None = None) -> float:
    """Mean Dice over the foreground classes 1..K-1 (the benchmark's summary number).

    Classes absent from the ground truth are left out of the mean (a perfect score for an
    empty class would inflate it); if no foreground class is present, returns the Dice of
    the whole map's background.
    """
    pred_i, gt_i = _check_pair(pred, gt)
    scores = dice_per_class(pred_i, gt_i, num_classes)
    present = [c for c in scores if c > 0 and np.any(gt_i == c)]
    if not present:
        return scores.get(0, 1.0)
    return float(np.mean([scores[c] for c in present]))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one 6-neighbour outside it (the image border counts)."""
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1),
                                    border_value=0)
    return mask & ~eroded


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise InputError(
            f"spacing must be {ndim} positive numbers (one per axis, (z, y, x)), got {spacing}"
        )
    return spacing


def _directed_p95(src_surface: np.ndarray, dst_surface: np.ndarray,
                  spacing: tuple[float, ...]) -> float:
    # distance from every voxel to the nearest surface voxel of dst
    dist = ndimage.distance_transform_edt(~dst_surface, sampling=spacing)
    return float(np.percentile(dist[src_surface], 95))


def hausdorff95(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    num_classes: int | None = None,
) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance of every class 0..K-1.

    Args:
        pred: predicted label map (Z, Y, X) of class indices.
        gt: ground-truth label map of the same shape.
        spacing: voxel size per axis in (z, y, x) order, e.g. mm; results are in these units.
        num_classes: K; None means ``max label in either map + 1``.

    Returns:
        ``{class: hd95}``; 0.0 if a class is absent from both maps, ``inf`` if absent from one.
    """
    pred_i, gt_i = _check_pair(pred, gt)
    spacing_t = _check_spacing(spacing, pred_i.ndim)
    k = _num_classes(pred_i, gt_i, num_classes)
    out: dict[int, float] = {}
    for c in range(k):
        p, g = pred_i == c, gt_i == c
        has_p, has_g = bool(p.any()), bool(g.any())
        if not has_p and not has_g:
            out[c] = 0.0
            continue
        if has_p != has_g:
            out[c] = float("inf")
            continue
        sp, sg = _surface(p), _surface(g)
        out[c] = max(_directed_p95(sp, sg, spacing_t), _directed_p95(sg, sp, spacing_t))
    return out
