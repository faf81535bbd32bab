"""Empty Zarr / OME-Zarr volumes to fill piece by piece, then commit atomically.

For outputs larger than memory (:func:`~napari_cnnseg.core.pipeline.segment_volume` with
``probabilities_out=`` / ``labels_out=``): the store is created in a hidden temporary folder
beside its destination, filled through :attr:`ZarrVolumeWriter.array` (a ``zarr.Array``),
and moved onto the destination by :meth:`~ZarrVolumeWriter.commit`. Left uncommitted (an
error, a cancel, or a scratch store nobody asked to keep) it is removed on ``close()`` /
leaving the ``with`` block, so readers never see a half-written store.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from ..errors import CnnsegError, InputError
from ._atomic import _remove, _replace, _temp_sibling
from ._suffixes import ZARR_SUFFIXES, _suffix
from ._zarr import _create_zarr
from .volume import Volume

logger = logging.getLogger(__package__)


#: a store may be at most this many times the free disk space, uncompressed (compression
#: gains on floats are small, on label maps large)
DISK_FACTOR_FLOAT = 2
DISK_FACTOR_INT = 8


def _check_disk_space(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a store that cannot fit on the disk (e.g. Zarr input metadata claiming 4000^3)."""
    import shutil

    folder = next((q for q in (path.parent, *path.parent.parents) if q.exists()), None)
    if folder is None:
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    factor = DISK_FACTOR_FLOAT if dtype.kind in "fc" else DISK_FACTOR_INT
    if nbytes > factor * free:
        raise CnnsegError(
            f"cannot create {path.name}: shape {shape} of {dtype} is {nbytes / 1e9:.3g} GB "
            f"uncompressed, more than {factor}x the {free / 1e9:.3g} GB free in {folder} "
            "(compression cannot make up for that); free space, choose another folder, or "
            "check the input's size"
        )


class ZarrVolumeWriter:
    """An empty OME-Zarr volume on disk, filled by the caller, committed atomically.

    Example::

        with ZarrVolumeWriter("out/probs.zarr", like=volume, shape=(k, *volume.spatial_shape),
                              dtype="f4", class_names=names) as w:
            predict(volume.array, model, out=w.array)
            w.commit()  # moved onto out/probs.zarr; without commit() the store is removed

    Args:
        path: destination ending in ``.zarr`` / ``.ome.zarr``; missing parent folders are made.
        like: the Volume whose geometry (spacing, origin, direction in (z, y, x)) and metadata
            the store carries (its voxels are not read).
        shape: (Z, Y, X) or (C, Z, Y, X) with (Z, Y, X) = ``like.spatial_shape``.
        dtype: voxel type (e.g. ``"f4"``, ``np.uint8``).
        chunks: chunk shape; default at most 64 voxels per spatial axis, one channel per chunk.
        **metadata: entries that update a copy of ``like.metadata`` (``class_names``, ``name``).

    Raises:
        InputError: not a Zarr path, or a shape off the volume's grid.
        CnnsegError: the store cannot be created (folder not writable, disk full).
    """

    def __init__(self, path: str | os.PathLike, *, like: Volume, shape: tuple[int, ...],
                 dtype: Any, chunks: tuple[int, ...] | None = None, **metadata: Any) -> None:
        self.path = Path(path).expanduser()
        if not _suffix(self.path, ZARR_SUFFIXES):
            raise InputError(f"cannot create {self.path.name!r}: a Zarr store must end in .zarr or .ome.zarr")
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (3, 4) or shape[-3:] != tuple(like.spatial_shape):
            raise InputError(
                f"store shape {shape} must be (Z, Y, X) or (C, Z, Y, X) with (Z, Y, X) = "
                f"{tuple(like.spatial_shape)} (the volume's grid)"
            )
        meta = {**like.metadata, **metadata}
        _check_disk_space(self.path, shape, np.dtype(dtype))
        self._tmp: Path | None = None
        self.committed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = _temp_sibling(self.path)
            self.array = _create_zarr(self._tmp, shape, np.dtype(dtype), like.geometry(), meta, chunks)
        except OSError as exc:
            self.close()
            raise CnnsegError(
                f"cannot create {self.path}: {exc.strerror or exc}; choose a writable folder with free space"
            ) from exc
        self._geometry = like
        self._metadata = meta
        logger.debug("created %s %s %s in %s", shape, np.dtype(dtype), self.path.name, self._tmp)

    def volume(self) -> Volume:
        """A lazy :class:`Volume` over :attr:`array` on the store's geometry."""
        return self._geometry.with_array(self.array, **self._metadata)

    def commit(self) -> Path:
        """Move the filled store onto :attr:`path` (replacing what is there); returns the path."""
        if self.committed:
            return self.path
        if self._tmp is None:
            raise CnnsegError(f"{self.path}: the store was closed before it was committed")
        try:
            _replace(self._tmp, self.path)
        except OSError as exc:
            raise CnnsegError(
                f"cannot write {self.path}: {exc.strerror or exc}; choose a writable folder with free space"
            ) from exc
        self.committed, self._tmp = True, None
        logger.info("wrote %s", self.path)
        return self.path

    def close(self) -> None:
        """Remove the temporary store unless it was committed (safe to call twice)."""
        if self._tmp is not None:
            _remove(self._tmp)
            self._tmp = None

    def __enter__(self) -> ZarrVolumeWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
