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

import numpy as np
from scipy import ndimage

from .errors import InputError


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
    # scan this is ~0.5 GB of temporaries instead of ~1.35 GB
    strokes = np.flatnonzero(flat_scr > 1)
    stroke_classes = flat_scr[strokes].astype(np.int64) - 1
    for c in np.unique(stroke_classes).tolist():  # foreground classes with strokes
        comp, n = _components(out == c)
        if n <= 1:
            continue
        keep = np.zeros(n + 1, bool)
        keep[comp.reshape(-1)[strokes[stroke_classes == c]]] = True
        keep[0] = True
        out[~keep[comp]] = 0
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


def apply_stroke_seeds(labels: np.ndarray, meta: dict, num_classes: int) -> np.ndarray:
    """:func:`keep_stroke_components` with the strokes a model remembers (``meta["stroke_seeds"]``)
    when ``labels`` is on the grid they were painted on and :func:`applies_to` the task;
    otherwise ``labels`` unchanged. This is how ``cnnseg segment -m CHECKPOINT`` of the scan
    that was fine-tuned shows what the dock showed."""
    info = (meta or {}).get("stroke_seeds")
    if not applies_to(num_classes) or not isinstance(info, dict):
        return labels
    if [int(s) for s in info.get("shape", [])] != list(labels.shape):
        return labels
    scr = np.zeros(labels.shape, np.uint8)
    for cls, pts in (info.get("classes") or {}).items():
        arr = np.asarray(pts, dtype=np.int64).reshape(-1, 3)
        ok = ((arr >= 0) & (arr < np.array(labels.shape))).all(1)
        arr = arr[ok]
        scr[arr[:, 0], arr[:, 1], arr[:, 2]] = int(cls) + 1
    # a sample of the strokes: they only pick components, they do not relabel voxels
    return keep_stroke_components(labels, scr, honour_strokes=False)
