"""One check for scribble (sparse label) maps, shared by every front end.

A scribble map holds one integer per voxel of the image grid: ``0`` = unpainted, ``k`` = class
``k - 1`` (so ``1`` is background). The napari Fine-tune dock (through ``Session``),
``core.training.finetune``, ``cnnseg finetune`` and the 3D Slicer module all call
:func:`check_scribbles`, so a map refused in one place is refused everywhere with the same
message: a map of 0.5 / 1.5 / 2.5 is not rounded or truncated into some other labelling.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputError

__all__ = ["check_scribbles"]


def check_scribbles(
    scribbles: Any,
    grid_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    *,
    require_painted: bool = True,
    allow_float: bool = True,
    what: str = "scribbles",
) -> np.ndarray:
    """Validate a scribble map and return it as an integer numpy array.

    Args:
        scribbles: array-like (Z, Y, X); integer, bool, or float holding whole numbers.
        grid_shape: the image's (Z, Y, X); the scribbles must have exactly this shape
            (a (C, Z, Y, X) shape is accepted and its last three axes are used).
        num_classes: the model's class count K; values must be 0..K (None: not checked).
        require_painted: refuse a map with no painted voxel.
        allow_float: accept a float map holding whole numbers (a label map a tool saved as
            float); False refuses any float dtype (a napari Labels layer is always integer).
        what: how messages name the map (e.g. a file name).

    Returns:
        The scribbles as a C-contiguous ``uint8`` array (K < 255) or ``int64`` array, same shape.
        An integer input already in range is returned without a copy when possible.

    Raises:
        InputError: wrong number of axes or grid, non-numeric / non-integer / NaN / infinite
            values, negative values, values above K, or nothing painted. Each message says
            what to do.
    """
    arr = np.asarray(scribbles)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InputError(
            f"{what} must be a numeric label map (0 = unpainted, k = class k-1), got dtype "
            f"{arr.dtype}; paint them in a Labels layer or save an integer label map"
        )
    if np.issubdtype(arr.dtype, np.complexfloating):
        raise InputError(f"{what} hold complex numbers; save an integer label map")
    if arr.ndim != 3:
        raise InputError(
            f"{what} must be one 3D label map (Z, Y, X), got shape {tuple(arr.shape)}; "
            "export the scribbles as a single-channel label map on the image grid"
        )
    if grid_shape is not None:
        grid = tuple(int(s) for s in tuple(grid_shape)[-3:])
        if tuple(arr.shape) != grid:
            raise InputError(
                f"{what} of shape {tuple(arr.shape)} do not lie on the image grid {grid}; "
                "paint them on the image itself (same shape, spacing, origin and direction), "
                "e.g. with 'Add scribbles layer'"
            )
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating) and not allow_float:
        raise InputError(
            f"{what} must hold integers, got {arr.dtype}; paint them in a Labels layer "
            "(e.g. 'Add scribbles layer') or convert them to an integer label map"
        )
    if np.issubdtype(arr.dtype, np.floating):
        _check_whole_numbers(arr, what)
    hi = _check_range(arr, num_classes, require_painted, what)
    dtype = np.uint8 if hi < 255 else np.int64
    if arr.dtype == dtype:
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(arr.astype(dtype))


def _check_whole_numbers(arr: np.ndarray, what: str) -> None:
    """A float scribble map must hold finite whole numbers (no NaN/inf, no 0.5, 1.5, ...)."""
    finite = np.isfinite(arr)
    if not finite.all():
        n = int(arr.size - np.count_nonzero(finite))
        raise InputError(
            f"{what} hold {n} NaN or infinite value(s); a scribble map holds whole numbers "
            "only (0 = unpainted, k = class k-1): save it as an integer label map"
        )
    frac = arr != np.floor(arr)
    if frac.any():
        bad = np.unique(arr[frac])[:3].tolist()
        raise InputError(
            f"{what} hold non-integer values (e.g. {', '.join(f'{v:g}' for v in bad)}); a "
            "scribble map holds whole numbers only (0 = unpainted, k = class k-1): save it "
            "as an integer label map, not an interpolated or probability image"
        )


def _check_range(arr: np.ndarray, num_classes: int | None, require_painted: bool,
                 what: str) -> float:
    """Values within 0..K (K = ``num_classes``), something painted; returns the largest."""
    if arr.size == 0:
        raise InputError(f"{what} are empty (shape {tuple(arr.shape)}); paint on a 3D image")
    lo, hi = (float(arr.min()), float(arr.max()))
    if lo < 0:
        raise InputError(
            f"{what} hold negative values (down to {lo:g}); use 0 for unpainted and k for "
            "class k-1"
        )
    if num_classes is not None:
        k = int(num_classes)
        if hi > k:
            raise InputError(
                f"{what} hold values up to {hi:g} but the model has {k} classes: values must be "
                f"0..{k} (0 = unpainted, k = class k-1); pick a model with more classes or "
                "repaint with the model's values"
            )
    elif hi > np.iinfo(np.int64).max:
        raise InputError(f"{what} hold a value too large for a label ({hi:g})")
    if require_painted and hi == 0:
        raise InputError(
            f"{what} have no painted voxel; paint a few strokes of at least one class first "
            "(value 1 = background, k = class k-1)"
        )
    return hi
