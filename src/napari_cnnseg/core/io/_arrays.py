"""Array-shape checks and conversions shared by the readers and writers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)


class LazyView:
    """Read-on-slice view of a lazy array (zarr) with some axes fixed at one index.

    Picking a channel or dropping a singleton time axis of a Zarr store this way reads no
    voxels; slicing the view (basic indexing: ints, slices, Ellipsis) reads only that block
    and returns numpy. Duck-types what the engine needs: ``shape``, ``ndim``, ``dtype``,
    ``__getitem__``, ``__array__``.
    """

    def __init__(self, base: Any, fixed: dict[int, int]) -> None:
        self.base = base
        self.fixed = {int(a): int(i) for a, i in fixed.items()}
        self._free = [a for a in range(base.ndim) if a not in self.fixed]
        self.shape = tuple(int(base.shape[a]) for a in self._free)
        self.ndim = len(self.shape)
        self.dtype = base.dtype

    def select(self, axis: int, index: int) -> LazyView:
        """The view with its ``axis`` fixed at ``index`` (one dimension fewer)."""
        return LazyView(self.base, {**self.fixed, self._free[axis]: index % self.shape[axis]})

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        if len(key) > self.ndim:
            raise IndexError(f"too many indices ({len(key)}) for a view of shape {self.shape}")
        key = key + (slice(None),) * (self.ndim - len(key))
        full: list[Any] = [None] * self.base.ndim
        for axis, index in self.fixed.items():
            full[axis] = index
        for axis, k in zip(self._free, key, strict=True):
            full[axis] = k
        return np.asarray(self.base[tuple(full)])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[...]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyView(shape={self.shape}, dtype={self.dtype}, fixed={self.fixed}, base={self.base!r})"


def _lazy_czyx(array: Any, axes: str) -> Any | None:
    """A read-on-slice (C, Z, Y, X) / (Z, Y, X) form of a lazy array with axis letters.

    Returns the array itself for ``ZYX`` / ``CZYX``, a :class:`LazyView` when other leading
    axes (``T``, ...) are singletons (e.g. OME-Zarr ``TCZYX`` with one time point), and None
    when the axes need reordering or a non-singleton axis besides C (the caller then loads).
    """
    axes = axes.upper()
    if len(axes) != array.ndim or not axes.endswith("ZYX") or axes[:-3].count("C") > 1:
        return None
    fixed = {}
    for i, letter in enumerate(axes[:-3]):
        if letter in "ZYX" or (letter != "C" and array.shape[i] != 1):
            return None
        if letter != "C":
            fixed[i] = 0
    return LazyView(array, fixed) if fixed else array


def _take_channel(array: Any, index: int) -> Any:
    """``array[index]`` along the first axis; lazily (no voxel read) for non-numpy arrays."""
    if isinstance(array, np.ndarray):
        return array[index]
    if isinstance(array, LazyView):
        return array.select(0, index)
    return LazyView(array, {0: index % int(array.shape[0])})


def _select_channel(array: Any, channel: int | None, all_channels: bool, path: Path) -> Any:
    """(C, Z, Y, X) -> pick a channel, squeeze C == 1, or complain (lazy arrays stay lazy)."""
    if array.ndim != 4:
        if channel not in (None, 0):
            raise InputError(f"{path.name} has a single channel; channel={channel} does not exist")
        return array
    n = array.shape[0]
    if channel is not None:
        if not -n <= channel < n:
            raise InputError(f"{path.name} has {n} channels; choose channel 0..{n - 1}")
        return _take_channel(array, channel)
    if n == 1:
        return _take_channel(array, 0)
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


#: a leading unnamed axis at most this long is read as channels (see ``_to_czyx``)
MAX_UNNAMED_CHANNELS = 8


def _to_czyx(data: Any, axes: str, path: Path) -> Any:
    """Reorder an array with axis letters (tifffile/OME conventions) to (C, Z, Y, X) or (Z, Y, X)."""
    axes = axes.upper()
    unnamed = [i for i, a in enumerate(axes) if a in "QIP"]
    if len(unnamed) == 2 and "Z" not in axes and "C" not in axes:
        # a 4D array saved without axis names (tifffile.imwrite(path, data)): (C, Z, Y, X) is
        # the only reading that fits a 3D segmentation tool when the first axis is short
        (i, j), shape = unnamed, tuple(data.shape)
        if shape[i] <= MAX_UNNAMED_CHANNELS and shape[i] < shape[j]:
            log.warning("%s has no axis names (shape %s): read as (C, Z, Y, X) with %d channels; "
                        "save it with axis metadata (e.g. tifffile.imwrite(path, data, "
                        "metadata={'axes': 'CZYX'})) to be explicit", path.name, shape, shape[i])
            axes = axes[:i] + "C" + axes[i + 1:j] + "Z" + axes[j + 1:]
        else:
            raise InputError(
                f"{path.name} has a 4D array {shape} without axis names; save one 3D stack per "
                "file, or name the axes (e.g. tifffile.imwrite(path, data, "
                "metadata={'axes': 'CZYX'}))"
            )
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
