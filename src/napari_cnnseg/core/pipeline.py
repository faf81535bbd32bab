"""Volume in, segmentation out: the one call the CLI, the Slicer module, the demo and the GUI use.

:func:`segment_volume` predicts class probabilities with :func:`~.inference.predict` and turns
them into a label map (argmax, uint8 class indices) and a per-voxel uncertainty (normalised
entropy), all as :class:`~.io.Volume` objects on the source geometry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from .errors import InputError
from .inference import network_spec, predict
from .io import Volume

log = logging.getLogger(__name__)

_SLAB = 16  # z slices per chunk when reducing probabilities (bounded temporaries)


@dataclass
class SegmentationResult:
    """Outputs of :func:`segment_volume`, each on the source volume's geometry.

    Attributes:
        labels: class indices (Z, Y, X), uint8 (uint16 beyond 255 classes);
            ``metadata["class_names"]`` names them.
        probabilities: softmax probabilities (K, Z, Y, X) float32, or None.
        uncertainty: normalised entropy (Z, Y, X) float32 in [0, 1] (0 = certain,
            1 = uniform over the K classes), or None.

    Each array is numpy, or the caller's ``*_out`` array (e.g. zarr) when one was given.
    """

    labels: Volume
    probabilities: Volume | None = None
    uncertainty: Volume | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.labels.metadata.get("class_names", []))


def labels_dtype(num_classes: int) -> np.dtype:
    """Integer type of a label map with ``num_classes`` classes: uint8, uint16 beyond 255."""
    return np.dtype(np.uint8) if num_classes <= 255 else np.dtype(np.uint16)


def labels_from_probabilities(probabilities: Any, out: Any = None) -> Any:
    """Argmax over classes, slab by slab (works on zarr/dask probabilities too).

    Args:
        probabilities: (K, Z, Y, X) array.
        out: optional (Z, Y, X) integer array to fill.

    Returns:
        (Z, Y, X) uint8 class indices (uint16 when K > 255).
    """
    if probabilities.ndim != 4:
        raise InputError(f"probabilities must be (K, Z, Y, X), got shape {tuple(probabilities.shape)}")
    k, z = probabilities.shape[:2]
    dtype = labels_dtype(k)
    if out is None:
        out = np.empty(probabilities.shape[1:], dtype=dtype)
    for z0 in range(0, z, _SLAB):
        block = np.asarray(probabilities[:, z0:z0 + _SLAB])
        out[z0:z0 + _SLAB] = block.argmax(axis=0).astype(dtype)
    return out


def normalized_entropy(probabilities: Any, out: Any = None) -> Any:
    """Per-voxel entropy of the class distribution divided by log(K): float32 in [0, 1].

    Args:
        probabilities: (K, Z, Y, X) array of probabilities summing to 1 over K.
        out: optional (Z, Y, X) float array to fill.

    Returns:
        (Z, Y, X) float32; all zeros when K == 1.
    """
    if probabilities.ndim != 4:
        raise InputError(f"probabilities must be (K, Z, Y, X), got shape {tuple(probabilities.shape)}")
    k, z = probabilities.shape[:2]
    if out is None:
        out = np.empty(probabilities.shape[1:], dtype=np.float32)
    if k == 1:
        out[...] = 0
        return out
    scale = 1.0 / math.log(k)
    for z0 in range(0, z, _SLAB):
        p = np.asarray(probabilities[:, z0:z0 + _SLAB], dtype=np.float32)
        ent = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=0) * scale
        out[z0:z0 + _SLAB] = np.clip(ent, 0.0, 1.0)
    return out


def class_names_for(model: nn.Module, k: int) -> list[str]:
    """The model's K class names (``meta["class_names"]``), else background, class 1, ..."""
    meta = getattr(model, "meta", None) or {}
    names = list(meta.get("class_names") or [])
    if len(names) != k:
        try:
            from .models import model_meta

            names = list(model_meta(model).get("class_names") or [])
        except Exception:  # noqa: BLE001 - models package absent or foreign module
            names = []
    if len(names) != k:
        names = ["background"] + [f"class {i}" for i in range(1, k)]
    return names


def _check_out(name: str, out: Any, shape: tuple[int, ...], kinds: str, what: str) -> None:
    """An ``out=`` array must have the volume's grid and a fitting dtype."""
    if out is None:
        return
    if tuple(int(s) for s in getattr(out, "shape", ())) != shape:
        raise InputError(f"{name} has shape {tuple(getattr(out, 'shape', ()))}; it must be {shape}")
    if np.dtype(out.dtype).kind not in kinds:
        raise InputError(f"{name} has dtype {out.dtype}; it must hold {what}")


def segment_volume(
    volume: Volume,
    model: nn.Module,
    *,
    probabilities: bool = True,
    uncertainty: bool = True,
    probabilities_out: Any = None,
    labels_out: Any = None,
    uncertainty_out: Any = None,
    postprocess: bool = True,
    strokes: np.ndarray | None = None,
    **predict_kwargs: Any,
) -> SegmentationResult:
    """Segment a volume: labels (+ probabilities, + uncertainty) on its geometry.

    By default every output is a numpy array in memory (the probabilities take K x 4 bytes per
    voxel). For volumes larger than memory, pass a lazy ``volume.array`` (zarr / dask) and
    ``*_out`` arrays to fill (e.g. ``zarr.Array``, see :class:`~.io.ZarrVolumeWriter`): the
    probabilities are written tile by tile and labels / uncertainty slab by slab, so peak
    memory is bounded by the tiles and slabs, not the volume.

    Args:
        volume: image (Z, Y, X) or (C, Z, Y, X) with its geometry.
        model: network (see :func:`~.inference.predict`).
        probabilities: keep the (K, Z, Y, X) probability Volume in the result.
        uncertainty: compute the normalised-entropy Volume.
        probabilities_out: (K, Z, Y, X) float32 / float16 array-like to fill with the softmax
            probabilities (numpy, zarr, ...) instead of a new numpy array.
        labels_out: (Z, Y, X) integer array-like to fill with the class indices.
        uncertainty_out: (Z, Y, X) float array-like to fill with the normalised entropy
            (needs ``uncertainty=True``).
        postprocess: for a two-class model, a graph cut on the probabilities (numpy ones)
            with the strokes as hard constraints, then the regions of the structure that touch
            none of its strokes set to background (``core.postprocess``): the strokes of
            ``strokes``, else those the model remembers (``meta["stroke_seeds"]``). For labels
            computed here or a numpy ``labels_out`` (in place; a lazy one is left as is).
        strokes: (Z, Y, X) int scribbles on the volume's grid (0 = unpainted, k = class k-1).
        **predict_kwargs: passed to :func:`~.inference.predict` (tile_shape, overlap,
            batch_size, device, precision, normalization, progress, cancel, ...).

    Returns:
        :class:`SegmentationResult`. ``labels.metadata["class_names"]`` holds the model's
        class names; probabilities/uncertainty are None when not asked for. Each Volume wraps
        the given ``*_out`` array when there is one.

    Raises:
        InputError: not a Volume, an ``roi``, or an ``*_out`` array off the volume's grid.
    """
    if not isinstance(volume, Volume):
        raise InputError(f"segment_volume expects a core.io.Volume, got {type(volume).__name__}")
    if predict_kwargs.get("roi") is not None:
        raise InputError("segment_volume predicts the whole volume; use predict(..., roi=) for a box")
    if predict_kwargs.get("out") is not None:
        raise InputError("segment_volume takes probabilities_out=, not out=")
    if uncertainty_out is not None and not uncertainty:
        raise InputError("uncertainty_out needs uncertainty=True")
    grid = tuple(volume.spatial_shape)
    k = network_spec(model).num_classes
    # checked before the (long) prediction
    _check_out("probabilities_out", probabilities_out, (k, *grid), "f", "floats")
    _check_out("labels_out", labels_out, grid, "iu", "class indices (an integer type)")
    _check_out("uncertainty_out", uncertainty_out, grid, "f", "floats")
    if labels_out is not None and k > np.iinfo(labels_out.dtype).max + 1:
        raise InputError(f"labels_out has dtype {labels_out.dtype}, too small for {k} classes")
    probs = predict(volume.array, model, out=probabilities_out, **predict_kwargs)
    names = class_names_for(model, k)
    label_arr, unc_arr = _reduce(probs, labels_out, uncertainty_out, uncertainty)
    if postprocess and isinstance(label_arr, np.ndarray):
        kept = _postprocess(label_arr, probs, volume, model, k, strokes)
        if labels_out is None:
            label_arr = kept
        elif kept is not label_arr:  # a numpy labels_out is post-processed in place
            label_arr[...] = kept
            del kept
    labels = volume.with_array(label_arr, class_names=names)
    unc = volume.with_array(unc_arr, class_names=names) if uncertainty else None
    prob_vol = volume.with_array(probs, class_names=names) if probabilities else None
    log.debug("segmented %s into %d classes", volume.spatial_shape, k)
    return SegmentationResult(labels=labels, probabilities=prob_vol, uncertainty=unc)


def _postprocess(labels: np.ndarray, probs: Any, volume: Volume, model: nn.Module, k: int,
                 strokes: np.ndarray | None) -> np.ndarray:
    """``core.postprocess`` (stroke-connected components, a graph cut in their box, the
    components again) with the given strokes, else the ones the model remembers; ``labels``
    itself when neither applies."""
    from .postprocess import applies_to, graph_cut, keep_stroke_components, remembered_strokes

    if not applies_to(k):
        return labels
    remembered = strokes is None
    if remembered:
        strokes = remembered_strokes(getattr(model, "meta", None) or {}, labels.shape)
        if strokes is None:
            return labels
    # remembered strokes are a sample: they pick components (and are the cut's constraints)
    labels = keep_stroke_components(labels, strokes, honour_strokes=not remembered)
    if isinstance(probs, np.ndarray) and isinstance(volume.array, np.ndarray):
        # the cut's box is the kept structure's: look-alikes far away would make it the scan
        labels = graph_cut(labels, probs[1], volume.array, strokes, volume.spacing)
        labels = keep_stroke_components(labels, strokes, honour_strokes=False)
    return labels


def _reduce(probs: Any, labels_out: Any, uncertainty_out: Any, uncertainty: bool) -> tuple[Any, Any]:
    """Labels (+ uncertainty) in one pass over the probabilities, slab by slab."""
    k = probs.shape[0]
    if labels_out is None:
        labels_out = np.empty(probs.shape[1:], dtype=labels_dtype(k))
    if uncertainty and uncertainty_out is None:
        uncertainty_out = np.empty(probs.shape[1:], dtype=np.float32)
    for z0 in range(0, probs.shape[1], _SLAB):
        block = np.asarray(probs[:, z0:z0 + _SLAB])  # read once (zarr: one decompression)
        labels_out[z0:z0 + _SLAB] = labels_from_probabilities(block)
        if uncertainty:
            uncertainty_out[z0:z0 + _SLAB] = normalized_entropy(block)
    return labels_out, uncertainty_out if uncertainty else None
