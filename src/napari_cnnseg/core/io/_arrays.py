"""Array-shape checks and conversions shared by the readers and writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError


def _select_channel(array: Any, channel: int | None, all_channels: bool, path: Path) -> Any:
    """(C, Z, Y, X) -> pick a channel, squeeze C == 1, or complain."""
    if array.ndim != 4:
        if channel not in (None, 0):
            raise InputError(f"{path.name} has a single channel; channel={channel} does not exist")
        return array
    n = array.shape[0]
    if channel is not None:
        if not -n <= channel < n:
            raise InputError(f"{path.name} has {n} channels; choose channel 0..{n - 1}")
        return array[channel]
    if n == 1:
        return array[0]
    if all_channels:
        return array
    raise InputError(
        f"{path.name} has {n} channels (shape {tuple(array.shape)}); choose one with "
        f"channel=0..{n - 1}"
    )


def _check_spatial(shape: tuple[int, ...], path: Path) -> None:
    if len(shape) < 3:
        raise InputError(
            f"{path.name} is a {len(shape)}D image of shape {shape}; a 3D volume is needed "
            "(for a stack of 2D files, put them in one TIFF stack or a DICOM series folder)"
        )
    if len(shape) > 4:
        raise InputError(f"{path.name} has shape {shape}; only 3D volumes with optional channels are supported")


def _to_czyx(data: Any, axes: str, path: Path) -> Any:
    """Reorder an array with axis letters (tifffile/OME conventions) to (C, Z, Y, X) or (Z, Y, X)."""
    axes = axes.upper()
    # a stack of unnamed planes is a z stack
    for alias in "QIP":
        if alias in axes and "Z" not in axes:
            axes = axes.replace(alias, "Z", 1)
    if "S" in axes and "C" not in axes:
        axes = axes.replace("S", "C")
    keep = "CZYX"
    for i in reversed(range(len(axes))):  # squeeze singleton axes we do not keep
        if axes[i] not in keep or axes.count(axes[i]) > 1:
            if data.shape[i] != 1:
                raise InputError(
                    f"{path.name} has axes {axes!r} with shape {tuple(data.shape)}; axis "
                    f"{axes[i]!r} of size {data.shape[i]} is not supported (time series or "
                    "several samples per channel): save one 3D stack per file"
                )
            data = data[(slice(None),) * i + (0,)]
            axes = axes[:i] + axes[i + 1:]
    if "Z" not in axes or "Y" not in axes or "X" not in axes:
        raise InputError(
            f"{path.name} is a 2D image (axes {axes!r}, shape {tuple(data.shape)}); a 3D "
            "volume is needed: save the slices as one multi-page TIFF stack"
        )
    order = [axes.index(a) for a in keep if a in axes]
    return np.transpose(data, order) if order != list(range(len(order))) else data


def _storable(array: Any) -> np.ndarray:
    """numpy array in a dtype every format stores: bool -> uint8, float16 -> float32."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array
