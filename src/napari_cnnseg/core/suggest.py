"""Where to paint next: slices (and a region in each) ranked by the model's expected error.

After a prediction, :func:`suggest` ranks the slices of the volume along one axis (0 = z, the
axial slices the viewer steps through) by how many voxels the model probably gets wrong there,
and points at the connected region of that slice that holds most of it. The Fine-tune dock
shows the top suggestion ("Next suggestion"), ``cnnseg suggest`` prints the ranking.

The per-voxel signal is the probability that the shown label is wrong, ``1 - p[label]``
(``label`` = the argmax, or the label map the user sees when ``labels`` is given), divided by
its largest possible value ``1 - 1/K`` so that it lies in [0, 1] for any number of classes K.
Voxels below ``threshold`` on that scale count for nothing: a confident background has a small
but non-zero error on every voxel, and summed over a 512 x 512 slice that noise would outweigh
a lesion that the model gets wrong.

One structure on a background (K = 2) with foreground strokes: the label map shows only the
foreground regions that touch a stroke (``core.postprocess``), so unsure tissue elsewhere in
the scan cannot show up as an error. Only the voxels that could (:func:`reachable`) count;
without it the brain-lesion and lung-nodule suggestions pointed at slices far from the lesion
(none of the errors on them; docs/guided.md has the measurements behind every default).

Painted voxels are skipped (the user's strokes are the truth there). Slices that already carry
strokes are down-weighted by ``painted_weight`` (not skipped: a stroke on a slice does not fix
all of it). Numpy and scipy only; no Qt, no napari, no torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError
from .settings import with_options

log = logging.getLogger(__name__)

#: voxels whose normalised error (0 = certain and right .. 1 = uniform) is below this count 0
THRESHOLD = 0.2
#: normalised error above which an unsure voxel may join the shown foreground (:func:`reachable`)
REACH_THRESHOLD = 0.6
#: weight of a slice that already carries strokes
PAINTED_WEIGHT = 0.5
#: voxels (26-connected steps) around the shown structure and its strokes in which errors count,
#: when a label map is given (:func:`near_shown`); 0 = no such limit
NEAR = 2
#: voxels of margin around the suggested region's bounding box
BOX_MARGIN = 4
#: tolerance on probabilities outside [0, 1] (float16 rounding)
_TOL = 1e-3
#: z slices per slab: every whole-volume map is built slab by slab, so the float32
#: temporaries stay a few MB whatever the volume (a 600x512x512 CT: 16 x 4 MB per map)
_SLAB = 16
#: dtype of the per-voxel maps :func:`suggest` keeps (2 bytes a voxel; the ranking sums them)
_MAP_DTYPE = np.float16


@dataclass(frozen=True)
class Suggestion:
    """One place to paint next.

    Attributes:
        axis: axis of the slice in (Z, Y, X): 0 = z (axial slices, the default).
        index: 0-based slice index along ``axis`` (what napari's dims slider shows).
        center: voxel centre of the region in the slice, in the order of the two remaining
            axes: (y, x) for axis 0, (z, x) for axis 1, (z, y) for axis 2. It lies inside the
            region.
        bbox: half-open box (a0, a1, b0, b1) of the region in the same two axes, e.g.
            (y0, y1, x0, x1) for axis 0, with a margin of :data:`BOX_MARGIN` voxels.
        score: expected number of wrongly labelled voxels in the slice (after the threshold
            and the painted-slice weight): higher = paint here first.
        region_score: the part of ``score`` in the region.
        label: with ``suggest(..., per_class=True)``: the class index the region probably is
            but is not labelled as (the class to paint there); None for the combined ranking.
    """

    axis: int
    index: int
    center: tuple[int, int]
    bbox: tuple[int, int, int, int]
    score: float
    region_score: float = 0.0
    label: int | None = None

    def describe(self, shape: tuple[int, ...]) -> str:
        """Text for the user: ``"slice 37 of 61, region around (y 120, x 88)"``.

        ``shape`` is the volume's spatial shape (Z, Y, X) (extra leading axes are ignored).
        The slice number is 0-based, as napari's dims slider shows it.
        """
        shape = tuple(int(s) for s in shape)[-3:]
        names = [n for i, n in enumerate("zyx") if i != self.axis]
        where = "" if self.axis == 0 else f" along {'zyx'[self.axis]}"
        return (f"slice {self.index} of {shape[self.axis]}{where}, region around "
                f"({names[0]} {self.center[0]}, {names[1]} {self.center[1]})")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (``cnnseg suggest --json``)."""
        return {"axis": self.axis, "index": self.index, "center": list(self.center),
                "bbox": list(self.bbox), "score": round(float(self.score), 3),
                "region_score": round(float(self.region_score), 3), "label": self.label}


def _check(probabilities: Any, scribbles: Any, labels: Any, top: int, axis: int
           ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Validated arrays; :class:`InputError` saying what to fix otherwise."""
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise InputError(f"top must be a whole number >= 1, got {top!r}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0 (z), 1 (y) or 2 (x), got {axis!r}")
    probs = np.asarray(probabilities)
    if probs.ndim != 4:
        raise InputError(f"probabilities must be (K, Z, Y, X), got shape {probs.shape}; "
                         "pass the per-class probability maps of a prediction")
    if probs.shape[0] < 2:
        raise InputError(f"probabilities have {probs.shape[0]} class(es); suggestions need a "
                         "model with at least 2 classes (K, Z, Y, X)")
    if min(probs.shape[1:]) < 1:
        raise InputError(f"probabilities have an empty grid {probs.shape[1:]}")
    if probs.dtype.kind != "f":
        raise InputError(f"probabilities must be floats in [0, 1], got dtype {probs.dtype}")
    lo, hi = float(np.min(probs)), float(np.max(probs))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -_TOL or hi > 1 + _TOL:
        raise InputError(f"probabilities must be finite and in [0, 1], got values in "
                         f"[{lo:.4g}, {hi:.4g}]; pass softmax probabilities, not logits")
    grid = probs.shape[1:]
    out = [probs, None, None]
    for i, (name, arr) in enumerate((("scribbles", scribbles), ("labels", labels)), start=1):
        if arr is None:
            continue
        arr = np.asarray(arr)
        if arr.shape != grid:
            raise InputError(f"{name} have shape {arr.shape}, the probabilities' grid is {grid}; "
                             f"pass {name} (Z, Y, X) on the same grid")
        if arr.dtype.kind not in "iub":
            raise InputError(f"{name} must hold integers (class values), got dtype {arr.dtype}")
        if arr.size and int(arr.min()) < 0:
            raise InputError(f"{name} have negative values; use 0 for unpainted / background")
        out[i] = arr
    if labels is not None and out[2].size and int(out[2].max()) >= probs.shape[0]:
        raise InputError(f"labels go up to {int(out[2].max())} but the probabilities have "
                         f"{probs.shape[0]} classes")
    return out[0], out[1], out[2]


def error_map(probabilities: np.ndarray, labels: np.ndarray | None = None, *,
              dtype: Any = np.float32) -> np.ndarray:
    """Normalised probability that each voxel's label is wrong: (Z, Y, X) in [0, 1].

    ``(1 - p[label]) / (1 - 1/K)`` with ``label`` the argmax (or ``labels`` when given): 0 where
    the model is certain of the label, 1 where it is uniform over the K classes (above 1, up to
    ``K / (K - 1)``, where ``labels`` disagree with a confident model; clipped to 1). Built slab
    by slab into a new array of ``dtype`` (float32 by default).
    """
    out = np.empty(probabilities.shape[1:], dtype)
    for z0 in range(0, out.shape[0], _SLAB):
        out[z0:z0 + _SLAB] = _error_slab(probabilities, labels, z0)
    return out


def _error_slab(probabilities: np.ndarray, labels: np.ndarray | None, z0: int) -> np.ndarray:
    """:func:`error_map` of the slab ``z0 : z0 + _SLAB``, float32."""
    p = np.asarray(probabilities[:, z0:z0 + _SLAB], np.float32)
    if labels is None:
        right = p.max(axis=0)
    else:
        lab = np.asarray(labels[z0:z0 + _SLAB], np.int64)
        right = np.take_along_axis(p, lab[None], axis=0)[0]
    return np.clip((1.0 - right) / (1.0 - 1.0 / p.shape[0]), 0.0, 1.0)


def entropy_map(probabilities: np.ndarray, *, dtype: Any = np.float32) -> np.ndarray:
    """Normalised entropy (Z, Y, X) in [0, 1] of (K, Z, Y, X) probabilities, as ``dtype``."""
    k = probabilities.shape[0]
    out = np.empty(probabilities.shape[1:], dtype)
    for z0 in range(0, out.shape[0], _SLAB):
        p = np.clip(np.asarray(probabilities[:, z0:z0 + _SLAB], np.float32), 1e-12, 1.0)
        out[z0:z0 + _SLAB] = np.clip(-(p * np.log(p)).sum(axis=0) / np.log(k), 0.0, 1.0)
    return out


def reachable(probabilities: np.ndarray, labels: np.ndarray | None, scribbles: np.ndarray,
              threshold: float) -> np.ndarray | None:
    """Voxels whose error the user would see under the stroke-connected filter, or None.

    With one structure on a background (K = 2) the label map keeps only the foreground
    components that touch a foreground stroke (``core.postprocess``): an unsure voxel far from
    them could flip to foreground and still not be shown. The voxels that can be shown are the
    3D components (26-connectivity) of "foreground or unsure" (argmax 1, or
    :func:`error_map` of ``labels`` >= threshold) that touch a foreground stroke. None when the
    filter does not apply (K != 2, no foreground stroke): then every voxel counts.

    Memory: one bool map (reused for the answer) and one component map (uint16 when the count
    fits) besides the inputs; strokes are looked up by their flat indices.
    """
    from .postprocess import _components

    if probabilities.shape[0] != 2 or scribbles is None:
        return None
    plane = int(np.prod(scribbles.shape[1:]))
    strokes = np.concatenate([np.flatnonzero(scribbles[z0:z0 + _SLAB] == 2) + z0 * plane
                              for z0 in range(0, scribbles.shape[0], _SLAB)])
    if not strokes.size:
        return None
    maybe = np.empty(scribbles.shape, bool)
    for z0 in range(0, scribbles.shape[0], _SLAB):
        e = _error_slab(probabilities, labels, z0)
        unsure = (e >= threshold) if threshold > 0 else (e > 0)
        maybe[z0:z0 + _SLAB] = unsure | (probabilities[1, z0:z0 + _SLAB]
                                         > probabilities[0, z0:z0 + _SLAB])
    comp, n = _components(maybe)
    keep = np.zeros(n + 1, bool)
    keep[comp.reshape(-1)[strokes]] = True
    keep[0] = False
    for z0 in range(0, comp.shape[0], _SLAB):  # (np.take would copy comp as int64: 8 B/voxel)
        maybe[z0:z0 + _SLAB] = keep[comp[z0:z0 + _SLAB]]
    return maybe


def near_shown(seen: np.ndarray, labels: np.ndarray, scribbles: np.ndarray, near: int) -> None:
    """Keep in ``seen`` (Z, Y, X bool, in place) only voxels within ``near`` 26-connected steps
    of the shown structure (``labels == 1``) or a foreground stroke; slab by slab.

    The shown map of one structure is the graph cut + stroke-connected components of the
    probabilities (``core.pipeline``), not their argmax: a net trained on a few strokes is
    unsure over much tissue that touches the lesion, which the cut leaves out. The errors a
    user sees are at the shown structure's border (parts missed next to it, parts shown too
    much); measured on the brain lesion, recall at 3 0.56 -> 0.77 (docs/guided.md).
    """
    structure = np.ones((3, 3, 3), bool)
    z = seen.shape[0]
    for z0 in range(0, z, _SLAB):
        a, b = max(0, z0 - near), min(z, z0 + _SLAB + near)
        core = (np.asarray(labels[a:b]) == 1) | (np.asarray(scribbles[a:b]) == 2)
        n = min(_SLAB, z - z0)
        if core.any():
            grown = ndimage.binary_dilation(core, structure, iterations=near)
            seen[z0:z0 + n] &= grown[z0 - a:z0 - a + n]
        else:
            seen[z0:z0 + n] = False


def slice_scores(error: np.ndarray, axis: int, scribbles: np.ndarray | None, *,
                 threshold: float, painted_weight: float) -> np.ndarray:
    """Per-slice error mass along ``axis`` of an (Z, Y, X) :func:`error_map` (a new array).

    Voxels below ``threshold`` and painted voxels count 0; slices with strokes are multiplied
    by ``painted_weight``. Summed slab by slab (float32 temporaries of one slab).
    """
    scores = np.zeros(error.shape[axis], np.float64)
    painted = np.zeros(error.shape[axis], bool)
    other = tuple(a for a in range(3) if a != axis)
    for z0 in range(0, error.shape[0], _SLAB):
        err = np.asarray(error[z0:z0 + _SLAB], np.float32)
        err[err < threshold] = 0.0
        if scribbles is not None:
            on = np.asarray(scribbles[z0:z0 + _SLAB]) > 0
            err[on] = 0.0
            part = on.any(axis=other)
        sums = err.sum(axis=other, dtype=np.float64)
        if axis == 0:
            scores[z0:z0 + err.shape[0]] = sums
            if scribbles is not None:
                painted[z0:z0 + err.shape[0]] = part
        else:
            scores += sums
            if scribbles is not None:
                painted |= part
    if scribbles is not None and painted_weight != 1.0:
        scores[painted] *= painted_weight
    return scores


def best_region(error2d: np.ndarray, threshold: float, margin: int = BOX_MARGIN
                ) -> tuple[tuple[int, int], tuple[int, int, int, int], float]:
    """(centre, bbox, mass) of the 8-connected region of ``error2d`` >= ``threshold`` that holds
    the most error mass. Without such a region: the most uncertain voxel and the whole slice."""
    mask = error2d >= threshold if threshold > 0 else error2d > 0
    h, w = error2d.shape
    if not mask.any():
        c = np.unravel_index(int(np.argmax(error2d)), error2d.shape)
        return (int(c[0]), int(c[1])), (0, h, 0, w), 0.0
    comp, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    mass = ndimage.sum_labels(error2d, comp, index=np.arange(1, n + 1))
    best = int(np.argmax(mass)) + 1
    pts = np.argwhere(comp == best)
    weights = error2d[pts[:, 0], pts[:, 1]].astype(np.float64)
    centroid = (pts * weights[:, None]).sum(0) / max(weights.sum(), 1e-12)
    inside = pts[int(np.argmin(((pts - centroid) ** 2).sum(1)))]  # centre inside the region
    (a0, b0), (a1, b1) = pts.min(0), pts.max(0) + 1
    bbox = (max(0, int(a0) - margin), min(h, int(a1) + margin),
            max(0, int(b0) - margin), min(w, int(b1) + margin))
    return (int(inside[0]), int(inside[1])), bbox, float(mass[best - 1])


def _rank(error: np.ndarray, *, axis: int, scribbles: np.ndarray | None, top: int,
          threshold: float, painted_weight: float, label: int | None = None
          ) -> list[Suggestion]:
    """The ``top`` slices of an error map (Z, Y, X) along ``axis``, each with its region."""
    scores = slice_scores(error, axis, scribbles, threshold=threshold,
                          painted_weight=painted_weight)
    out = []
    for index in [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > 0][:top]:
        plane = np.take(error, index, axis=axis).copy()
        if scribbles is not None:
            plane[np.take(scribbles, index, axis=axis) > 0] = 0.0
        center, bbox, mass = best_region(plane, threshold)
        out.append(Suggestion(axis=axis, index=index, center=center, bbox=bbox,
                              score=float(scores[index]), region_score=mass, label=label))
    return out


def _missed_map(probs: np.ndarray, labels: np.ndarray | None, c: int,
                seen: np.ndarray | None, out: np.ndarray) -> None:
    """Fill ``out`` (Z, Y, X) with the expected voxels of class ``c`` labelled otherwise:
    ``p[c]`` normalised as in :func:`error_map` where the shown label (``labels``, or the
    argmax) is not ``c``, 0 elsewhere and outside ``seen``; slab by slab."""
    scale = 1.0 / (1.0 - 1.0 / probs.shape[0])
    for z0 in range(0, out.shape[0], _SLAB):
        p = np.asarray(probs[:, z0:z0 + _SLAB], np.float32)
        shown = p.argmax(axis=0) if labels is None else np.asarray(labels[z0:z0 + _SLAB])
        m = np.where(shown != c, np.clip(p[c] * scale, 0.0, 1.0), 0.0)
        if seen is not None:
            m *= seen[z0:z0 + _SLAB]
        out[z0:z0 + _SLAB] = m


def seed_scribbles(meta: dict | None, shape: tuple[int, int, int]) -> np.ndarray | None:
    """The strokes a fine-tuned model remembers (``meta["stroke_seeds"]``,
    :func:`core.postprocess.remembered_strokes`) as a (Z, Y, X) uint8 scribble map, or None
    when it has none for a grid of ``shape``."""
    from .postprocess import remembered_strokes

    scr = remembered_strokes(meta or {}, shape)
    return scr if scr is not None and scr.any() else None


@dataclass(frozen=True)
class Ranking:
    """How :func:`suggest` ranks (each setting is described there)."""

    axis: int = 0
    threshold: float = THRESHOLD
    painted_weight: float = PAINTED_WEIGHT
    stroke_connected: bool = True
    reach_threshold: float = REACH_THRESHOLD
    near: int = NEAR
    signal: str = "error"
    per_class: bool = False

    @classmethod
    def of(cls, ranking: Ranking | None = None, **options: Any) -> Ranking:
        """``ranking`` (or the defaults) with ``options`` applied, validated."""
        r = with_options(cls, ranking, options, "suggestion")
        for name in ("threshold", "painted_weight", "reach_threshold"):
            value = getattr(r, name)
            if not (isinstance(value, (int, float)) and 0.0 <= float(value) <= 1.0):
                raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
        if isinstance(r.near, bool) or not isinstance(r.near, (int, np.integer)) or r.near < 0:
            raise InputError(f"near must be a whole number of voxels >= 0, got {r.near!r}")
        if r.signal not in ("error", "entropy"):
            raise InputError(f"signal must be 'error' or 'entropy', got {r.signal!r}")
        return r


def suggest(probabilities: np.ndarray, *, scribbles: np.ndarray | None = None, top: int = 5,
            labels: np.ndarray | None = None, ranking: Ranking | None = None,
            **options: Any) -> list[Suggestion]:
    """The ``top`` slices to paint next, best first, each with the region to look at.

    The ranking settings are a :class:`Ranking` (``ranking``) and/or its fields as keywords
    (``options``): axis, threshold, painted_weight, stroke_connected, reach_threshold, near,
    signal, per_class.

    Args:
        probabilities: (K, Z, Y, X) float16/float32 softmax probabilities, K >= 2.
        scribbles: (Z, Y, X) integer strokes, 0 = unpainted, k = class k-1 (optional). Painted
            voxels count 0; slices with strokes are multiplied by ``painted_weight``.
        top: how many suggestions (>= 1); fewer come back when fewer slices have any error.
        labels: (Z, Y, X) label map the user sees (e.g. after the stroke-connected filter), if
            it differs from the argmax of ``probabilities``.
        axis: slicing axis of the (Z, Y, X) grid, 0 = z (axial slices).
        threshold: normalised error (0..1) below which a voxel counts 0.
        painted_weight: weight (0..1) of a slice that already carries strokes.
        stroke_connected: the label map shows only the foreground regions that touch a
            foreground stroke (the dock's and ``Session.segment``'s default for K = 2): only
            errors that could show there count (:func:`reachable`). Ignored unless K = 2 and
            ``scribbles`` has a foreground stroke.
        reach_threshold: normalised error above which an unsure voxel may join the shown
            foreground in :func:`reachable` (0..1).
        near: with ``labels`` and the stroke-connected filter: only errors within this many
            voxels of the shown structure or a foreground stroke count (:func:`near_shown`).
        signal: per-voxel signal, ``"error"`` (:func:`error_map`, the default) or
            ``"entropy"`` (normalised entropy of the class distribution; measured worse,
            docs/guided.md).
        per_class: rank each class c on its own: the expected number of voxels that are c
            but labelled otherwise (``p[c]``, normalised as in :func:`error_map`); up to
            ``top`` suggestions per class, each with its ``label``, all sorted by score.

    Returns:
        Up to ``top`` :class:`Suggestion` (per class with ``per_class``) sorted by decreasing
        score; slices with no error above the threshold are left out (an empty list when the
        model is sure everywhere).

    Raises:
        InputError: shapes, dtypes or values that are not probabilities / label maps, top < 1,
            axis not 0, 1 or 2, threshold or painted_weight outside [0, 1].
    """
    r = Ranking.of(ranking, **options)
    probs, scr, lab = _check(probabilities, scribbles, labels, top, r.axis)
    seen = reachable(probs, lab, scr, r.reach_threshold) if r.stroke_connected else None
    if seen is not None and lab is not None and r.near > 0:
        near_shown(seen, lab, scr, r.near)
    if r.signal == "entropy":
        error = entropy_map(probs, dtype=_MAP_DTYPE)
    else:
        error = error_map(probs, lab, dtype=_MAP_DTYPE)
    if seen is not None:
        np.multiply(error, seen, out=error)
    rank_kw = {"axis": r.axis, "scribbles": scr, "top": top, "threshold": r.threshold,
               "painted_weight": r.painted_weight}
    if not r.per_class:
        out = _rank(error, **rank_kw)
    else:
        out = []
        missed = error  # reused: one map at a time
        for c in range(probs.shape[0]):
            _missed_map(probs, lab, c, seen, missed)
            out += _rank(missed, label=c, **rank_kw)
        out.sort(key=lambda sug: -sug.score)
    log.debug("suggestions along axis %d: %s", r.axis, [(s.index, round(s.score, 1)) for s in out])
    return out
