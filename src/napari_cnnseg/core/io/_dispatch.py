"""read_volume / write_volume: pick the format from the path and report errors clearly."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..errors import CnnsegError, InputError, VolumeReadError
from ._atomic import _atomic_path
from ._sitk_formats import _read_dicom, _read_sitk, _write_sitk, is_dicom_file
from ._suffixes import (
    DICOM_SUFFIXES,
    READ_SUFFIXES,
    SITK_SUFFIXES,
    TIFF_SUFFIXES,
    WRITE_SUFFIXES,
    ZARR_SUFFIXES,
    _suffix,
)
from ._tiff import _read_tiff, _write_tiff
from ._zarr import _is_zarr, _read_zarr, _write_zarr
from .volume import Volume

logger = logging.getLogger(__package__)  # one "napari_cnnseg.core.io" logger for the package


def read_volume(path: str | os.PathLike, *, channel: int | None = None,
                all_channels: bool = False, lazy: bool = False) -> Volume:
    """Read a volume file or DICOM series folder with its geometry.

    Args:
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, ``.tif``/``.tiff``
            (ImageJ or OME spacing), ``.zarr`` (OME-Zarr level 0 or a plain array), a folder
            holding one DICOM series, or a single ``.dcm`` file (its whole series is read).
        channel: for multi-channel files, the channel to keep (result (Z, Y, X)).
        all_channels: keep every channel as (C, Z, Y, X) instead of asking for ``channel``.
        lazy: for Zarr stores whose axes end in (Z, Y, X) (``ZYX``, ``CZYX``, OME ``TCZYX``
            with one time point, ...), return the zarr array itself, or a read-on-slice view
            of it where a channel or singleton axis is dropped, instead of a numpy array:
            voxels load only when sliced. Other formats (and reordered axes) always load.

    Returns:
        :class:`Volume` with ``metadata["source"]`` (path) and ``metadata["format"]``.

    Raises:
        VolumeReadError: missing, unreadable, corrupt or truncated file; empty folder;
            unknown extension.
        InputError: 2D image, several channels without ``channel``, non-finite spacing.
    """
    p = Path(path).expanduser()
    if p.is_symlink() and not p.exists():
        raise VolumeReadError(
            f"{p} is a symbolic link to nothing (a broken link or a loop of links); "
            "give the path of the file itself"
        )
    if not p.exists():
        raise VolumeReadError(f"{p} does not exist; check the path (current folder: {Path.cwd()})")
    if p.is_dir() and _suffix(p, ZARR_SUFFIXES) is None and not _is_zarr(p):
        if not any(p.iterdir()):
            raise VolumeReadError(f"folder {p} is empty; give a DICOM series folder or a volume file")
        fmt, vol = "dicom", _read_dicom(p, channel, all_channels)
    elif _suffix(p, ZARR_SUFFIXES) or _is_zarr(p):
        fmt, vol = "zarr", _read_zarr(p, channel, all_channels, lazy)
    elif _suffix(p, SITK_SUFFIXES):
        fmt, vol = _suffix(p, SITK_SUFFIXES).lstrip("."), _read_sitk(p, channel, all_channels)
    elif _suffix(p, TIFF_SUFFIXES):
        fmt, vol = "tiff", _read_tiff(p, channel, all_channels)
    elif _suffix(p, DICOM_SUFFIXES) or is_dicom_file(p):
        fmt, vol = "dicom", _read_dicom(p.parent, channel, all_channels, prefer=p)
    else:
        raise VolumeReadError(
            f"unknown file type {p.name!r}; supported: {', '.join(READ_SUFFIXES)} "
            "or a DICOM series folder (rename the file or convert it)"
        )
    if 0 in vol.spatial_shape:
        raise InputError(
            f"{p.name} holds no voxels (shape {vol.shape} has a zero-size axis); a 3D volume "
            "with at least 2 voxels along each axis is needed"
        )
    if 1 in vol.spatial_shape:
        raise InputError(
            f"{p.name} is a single 2D slice (shape {vol.shape}); a 3D volume with at least 2 "
            "voxels along each axis is needed: stack the slices into one volume"
        )
    vol.metadata.setdefault("source", str(p))
    vol.metadata["format"] = fmt
    logger.debug("read %s: shape %s spacing %s", p, vol.shape, vol.spacing)
    return vol


def write_volume(path: str | os.PathLike, volume: Volume) -> Path:
    """Write a volume with its geometry; the format follows the file name ending.

    NIfTI stores geometry as float32 (and converts LPS to RAS); NRRD, MetaImage, TIFF
    (our private tag + OME metadata) and Zarr (OME-Zarr 0.4 + ``cnnseg`` attributes) keep
    float64. ``bool`` is written as uint8 and float16 as float32.

    Args:
        path: destination; ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd``/
            ``.tif``/``.tiff``/``.zarr``. Missing parent folders are created.
        volume: the :class:`Volume` to write.

    Returns:
        The written path. The write is atomic: readers never see a half-written file.

    Raises:
        InputError: unknown extension or an invalid volume.
        CnnsegError: the file cannot be written (folder not writable, disk full); any
            existing file at ``path`` is left untouched.
    """
    if isinstance(path, Volume) and isinstance(volume, (str, os.PathLike)):
        raise InputError("write_volume takes (path, volume): the arguments are swapped")
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"write_volume needs a file path first, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not isinstance(volume, Volume):
        raise InputError(f"write_volume needs a Volume, got {type(volume).__name__}; wrap arrays with Volume(array, spacing, ...)")
    if not _suffix(p, WRITE_SUFFIXES):
        raise InputError(
            f"cannot write {p.name!r}: unknown extension; use one of {', '.join(WRITE_SUFFIXES)}"
        )
    try:
        if _suffix(p, ZARR_SUFFIXES):
            with _atomic_path(p) as tmp:
                _write_zarr(tmp, volume)
        elif _suffix(p, SITK_SUFFIXES):
            _write_sitk(p, volume)
        else:
            with _atomic_path(p) as tmp:
                _write_tiff(tmp, volume)
    except (OSError, RuntimeError) as exc:  # RuntimeError: ITK writer failures
        blocker = next((q for q in p.parents if q.exists() and not q.is_dir()), None)
        if blocker is not None:
            raise CnnsegError(
                f"cannot write {p}: {blocker} is a file, not a folder; choose another path"
            ) from exc
        raise CnnsegError(
            f"cannot write {p}: {str(exc).strip()[-200:]}; choose a writable folder with free space"
        ) from exc
    logger.info("wrote %s", p)
    return p
