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
    if honour_strokes:
        painted_voxels = scribbles > 0
        out[painted_voxels] = (scribbles[painted_voxels] - 1).astype(out.dtype)
    labels = out.copy()
    structure = np.ones((3, 3, 3), bool)
    painted = np.unique(scribbles[scribbles > 1]) - 1  # foreground classes with strokes
    for c in painted.tolist():
        region = labels == c
        comp, n = ndimage.label(region, structure=structure)
        if n <= 1:
            continue
        keep = np.zeros(n + 1, bool)
        keep[np.unique(comp[(scribbles == c + 1) & region])] = True
        keep[0] = True
        drop = ~keep[comp]
        out[drop] = 0
    return out


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
