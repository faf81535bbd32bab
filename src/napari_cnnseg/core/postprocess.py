"""Post-processing of a label map that uses the user's strokes.

:func:`keep_stroke_components`: first every painted voxel takes its painted class (the user
said what it is; a random forest, which fits its training voxels, shows the same), then a
foreground region the user painted is what they are segmenting; predicted regions of the same
class that touch none of its strokes are what a user would otherwise have to erase by hand
(look-alike tissue elsewhere in the scan). For each foreground class that has strokes, only
the 3D connected components (26-connectivity) of the label map that contain a stroke of that
class are kept; the rest become class 0. Classes without strokes are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import ndimage

from .errors import InputError

log = logging.getLogger(__name__)


def keep_stroke_components(labels: np.ndarray, scribbles: np.ndarray, *,
                           honour_strokes: bool = True) -> np.ndarray:
    """Label map (Z, Y, X) with the components that touch no stroke of their class removed.

    Args:
        labels: integer label map (Z, Y, X), class indices (0 = background).
        scribbles: integer strokes on the same grid; 0 = unlabelled, k = class k-1.
        honour_strokes: painted voxels take their painted class first (a stroke of class
            k-1 is a label the user set by hand).

    Returns:
        A new array of ``labels``' dtype.
    """
    labels = np.asarray(labels)
    scribbles = np.asarray(scribbles)
    if labels.shape != scribbles.shape:
        raise InputError(f"labels {labels.shape} and scribbles {scribbles.shape} are on "
                         "different grids; paint the scribbles on the image's grid")
    out = labels.copy()
    flat_scr = scribbles.reshape(-1)
    if honour_strokes:
        painted_at = np.flatnonzero(flat_scr)
        out.reshape(-1)[painted_at] = (flat_scr[painted_at] - 1).astype(out.dtype)
    # memory: one bool region and one component map (uint16 when the count fits) at a time,
    # strokes looked up by their flat indices (no full-size stroke masks): on a 600x512x512
    # scan this is ~0.45 GB of temporaries instead of ~1.35 GB
    strokes = np.flatnonzero(flat_scr > 1)
    stroke_classes = flat_scr[strokes].astype(np.int64) - 1
    for c in np.unique(stroke_classes).tolist():  # foreground classes with strokes
        comp, n = _components(out == c)
        if n <= 1:
            continue
        keep = np.zeros(n + 1, bool)
        keep[comp.reshape(-1)[strokes[stroke_classes == c]]] = True
        keep[0] = True
        for z0 in range(0, out.shape[0], 16):  # slab by slab: no full-size lookup result
            part = out[z0:z0 + 16]
            part[~keep[comp[z0:z0 + 16]]] = 0
        del comp
    return out


def _components(region: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a bool map: (component map, count), uint16 when it fits."""
    structure = np.ones((3, 3, 3), bool)
    try:
        return ndimage.label(region, structure=structure, output=np.uint16)
    except RuntimeError:  # more than 65535 components
        return ndimage.label(region, structure=structure, output=np.int32)


#: painted voxels per foreground class remembered in a model's meta (``stroke_seeds``)
SEEDS_PER_CLASS = 256


def applies_to(num_classes: int) -> bool:
    """Stroke-connected filtering is used for one structure on a background (2 classes): a
    lesion, an organ. Tissue maps with several classes have many legitimate pieces per class."""
    return int(num_classes) == 2


def stroke_seeds(scribbles: np.ndarray, seed: int = 0) -> dict:
    """A JSON-able summary of the strokes for a model's meta: the grid shape and up to
    :data:`SEEDS_PER_CLASS` painted voxels (z, y, x) per painted foreground class."""
    scribbles = np.asarray(scribbles)
    rng = np.random.default_rng(seed)
    classes = {}
    for value in np.unique(scribbles[scribbles > 1]).tolist():
        pts = np.argwhere(scribbles == value)
        if len(pts) > SEEDS_PER_CLASS:
            pts = pts[rng.choice(len(pts), SEEDS_PER_CLASS, replace=False)]
        classes[str(int(value) - 1)] = pts.astype(int).tolist()
    return {"shape": [int(s) for s in scribbles.shape], "classes": classes}


def remembered_strokes(meta: dict, shape: tuple[int, ...]) -> np.ndarray | None:
    """The strokes a model remembers (``meta["stroke_seeds"]``) as a uint8 map of ``shape``
    (Z, Y, X), or None when it remembers none or they were painted on another grid."""
    info = (meta or {}).get("stroke_seeds")
    if not isinstance(info, dict) or [int(s) for s in info.get("shape", [])] != list(shape):
        return None
    scr = np.zeros(shape, np.uint8)
    for cls, pts in (info.get("classes") or {}).items():
        arr = np.asarray(pts, dtype=np.int64).reshape(-1, 3)
        arr = arr[((arr >= 0) & (arr < np.array(shape))).all(1)]
        scr[arr[:, 0], arr[:, 1], arr[:, 2]] = int(cls) + 1
    return scr


#: graph cut: above this many voxels in its box (structure + its strokes + margin) the map is
#: left as predicted, with a log line (PyMaxflow's 6-connected grid graph and this function's
#: temporaries take ~280 bytes per voxel: ~1.1 GB here)
GRAPH_CUT_MAX_VOXELS = 4_000_000
#: graph cut: margin (voxels in-plane; the same mm along the other axes) around the box
GRAPH_CUT_MARGIN = 8
#: graph cut: weight of the contrast-sensitive boundary term relative to -log p
GRAPH_CUT_SMOOTHNESS = 1.0


def graph_cut(labels: np.ndarray, foreground: np.ndarray, image: np.ndarray,
              scribbles: np.ndarray, spacing: Any = None, *,
              smoothness: float = GRAPH_CUT_SMOOTHNESS, margin: int = GRAPH_CUT_MARGIN,
              max_voxels: int = GRAPH_CUT_MAX_VOXELS) -> np.ndarray:
    """Two-class label map (Z, Y, X) re-decided by a min cut: -log p plus a contrast term.

    The energy is the sum of -log p(label) per voxel and, for each pair of 6-neighbours given
    different labels, ``smoothness * exp(-beta * dI^2) / distance`` (Boykov-Jolly: a cut is
    cheap along image edges; beta = 1 / (2 mean dI^2) over the box, so no intensity scale is
    assumed). Painted voxels are hard constraints (their painted class). Only the bounding box
    of the predicted structure and the foreground strokes, grown by ``margin``, is cut (pass
    the stroke-connected structure, :func:`keep_stroke_components`: far look-alikes would make
    the box the whole scan).

    Args:
        labels: 0/1 label map (Z, Y, X) as predicted (argmax).
        foreground: (Z, Y, X) foreground probability (float16/32).
        image: (Z, Y, X) or (C, Z, Y, X) intensities (channels: standardised, dI^2 summed).
        scribbles: (Z, Y, X) strokes (0 unpainted, 1 background, 2 foreground).
        spacing: voxel size (z, y, x) in mm (edges are weighted by 1 / distance), or None.

    Returns:
        A new label map of ``labels``' dtype; outside the box (or when the box has more than
        ``max_voxels`` voxels) ``labels`` as given.
    """
    out = labels.copy()
    box = _cut_box(out, scribbles, spacing, margin)
    if box is None or smoothness <= 0:
        return out
    try:
        import maxflow
    except ImportError:  # a dependency (pyproject); an environment without it gets the argmax
        log.warning("graph cut skipped: PyMaxflow is not installed (pip install PyMaxflow)")
        return out
    n = int(np.prod([s.stop - s.start for s in box]))
    if n > max_voxels:
        log.info("graph cut skipped: its box has %d voxels (limit %d)", n, max_voxels)
        return out
    img = np.asarray(image[(..., *box)], np.float32)
    img = img[None] if img.ndim == 3 else img / (img.reshape(len(img), -1).std(1) + 1e-6)[
        :, None, None, None]
    sp = np.ones(3) if spacing is None else np.asarray(spacing, float)
    sp = sp / sp.min()
    sq = [np.square(np.diff(img, axis=a + 1)).sum(0) for a in range(3)]
    beta = 1.0 / (2.0 * max(sum(float(q.sum()) for q in sq) / sum(q.size for q in sq), 1e-12))
    g = maxflow.GraphFloat()
    ids = g.add_grid_nodes(img.shape[1:])
    for axis, q in enumerate(sq):
        w = np.zeros(img.shape[1:], np.float32)
        inner = tuple(slice(0, -1) if a == axis else slice(None) for a in range(3))
        w[inner] = np.exp(-beta * q) * (smoothness / sp[axis])
        structure = np.zeros((3, 3, 3))
        structure[tuple(2 if a == axis else 1 for a in range(3))] = 1
        g.add_grid_edges(ids, weights=w, structure=structure, symmetric=True)
    del sq, w, img
    p = np.clip(np.asarray(foreground[box], np.float32), 1e-4, 1 - 1e-4)
    scr = np.asarray(scribbles[box])
    to_bg, to_fg = -np.log1p(-p), -np.log(p)  # costs of calling a voxel background / foreground
    to_bg[scr == 2], to_fg[scr == 2] = 1e9, 0.0
    to_bg[scr == 1], to_fg[scr == 1] = 0.0, 1e9
    g.add_grid_tedges(ids, to_bg, to_fg)  # a voxel left on the sink side is background
    g.maxflow()
    out[box] = ~g.get_grid_segments(ids)
    return out


def _cut_box(labels: np.ndarray, scribbles: np.ndarray, spacing: Any, margin: int
             ) -> tuple[slice, ...] | None:
    """Bounding box (3 slices) of the foreground and its strokes, grown by ``margin``."""
    mask = labels > 0
    mask |= scribbles > 1
    lo, hi = [], []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        if not len(hit):
            return None
        lo.append(hit[0])
        hi.append(hit[-1])
    del mask
    sp = np.ones(3) if spacing is None else np.asarray(spacing, float)
    grow = np.maximum(1, np.round(margin * sp.min() / sp)).astype(int)
    start = np.maximum(np.array(lo) - grow, 0)
    stop = np.minimum(np.array(hi) + grow + 1, labels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))
