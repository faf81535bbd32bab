"""Read and write 3D volumes with their full voxel geometry.

Every reader returns a :class:`Volume`: voxels in (Z, Y, X) (or (C, Z, Y, X)) order plus
spacing, origin and direction, all expressed in the same (z, y, x) array-axis order.

Geometry convention
-------------------
The physical frame is LPS (as in ITK and 3D Slicer); NIfTI's RAS is converted on read and
back on write (SimpleITK does this). SimpleITK's arrays are already (z, y, x) but its
spacing/origin are (x, y, z): they are reversed. Its direction ``D`` (row = physical axis
x, y, z in LPS; column = index axis i, j, k) becomes ``D[::-1, ::-1]`` in (z, y, x) order,
so rows are physical axes (z, y, x) and columns index axes (z, y, x). The physical point
(z, y, x), in the file's unit (mm for medical formats, usually µm for microscopy), of voxel
index ``(z, y, x)`` is::

    origin + direction @ (spacing * index)

Formats: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``,
``.mhd``) and DICOM series folders through SimpleITK; TIFF stacks (ImageJ / OME spacing)
through tifffile; Zarr / OME-Zarr (level 0, multiscales ``scale`` / ``translation``)
through zarr. All but DICOM can be written; writes are atomic (temporary file in the same
folder, then :func:`os.replace`).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import shutil
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CnnsegError, InputError, VolumeReadError

logger = logging.getLogger(__name__)

#: file name endings read through SimpleITK, longest first
SITK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
DICOM_SUFFIXES = (".dcm",)
READ_SUFFIXES = SITK_SUFFIXES + TIFF_SUFFIXES + ZARR_SUFFIXES + DICOM_SUFFIXES
WRITE_SUFFIXES = SITK_SUFFIXES + TIFF_SUFFIXES + ZARR_SUFFIXES
#: our own geometry record inside TIFF (private tag) and Zarr (group attribute)
GEOMETRY_KEY = "cnnseg"
TIFF_GEOMETRY_TAG = 65000
CLASS_NAMES_KEY = "cnnseg_class_names"
#: unit spellings seen in OME-NGFF / ImageJ -> the symbol we keep in ``metadata["unit"]``
_UNITS = {"millimeter": "mm", "micrometer": "µm", "micron": "µm", "um": "µm", "\\u00b5m": "µm", "μm": "µm",
          "nanometer": "nm", "centimeter": "cm", "meter": "m"}
_NGFF_UNITS = {"mm": "millimeter", "µm": "micrometer", "nm": "nanometer", "cm": "centimeter", "m": "meter"}


def _unit(name: Any) -> str | None:
    """Normalised length unit symbol (``mm``, ``µm``, ...) or None."""
    if not name:
        return None
    return _UNITS.get(str(name).strip().lower(), str(name).strip())


def _as_triplet(values: Any, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be three numbers (z, y, x), got {values!r}") from exc
    if len(out) != 3:
        raise InputError(f"{what} must be three numbers (z, y, x), got {values!r}")
    if not all(np.isfinite(out)):
        raise InputError(
            f"{what} {out} is not finite; fix the file header or pass a finite {what} (z, y, x)"
        )
    return out  # type: ignore[return-value]


@dataclass(eq=False, repr=False)
class Volume:
    """Voxels plus geometry, all in (z, y, x) axis order.

    Attributes:
        array: voxels (Z, Y, X), or (C, Z, Y, X) when the file has several channels.
            numpy normally; a lazy zarr/dask array is accepted too.
        spacing: voxel size (z, y, x) in the file's unit (mm, or µm for microscopy); > 0.
        origin: physical position (z, y, x) of the centre of voxel (0, 0, 0), LPS frame.
        direction: 3x3 direction cosines; rows = physical axes, columns = index axes, both
            in (z, y, x) order. Physical point of index ``i``: ``origin + direction @ (spacing * i)``.
        metadata: everything else (source path, format, file header, ``class_names``, ...).
    """

    array: Any
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ndim = getattr(self.array, "ndim", None)
        if ndim is None:
            self.array = np.asarray(self.array)
            ndim = self.array.ndim
        if ndim not in (3, 4):
            raise InputError(
                f"expected a 3D volume (Z, Y, X) or (C, Z, Y, X), got shape {tuple(self.array.shape)}; "
                "2D images and time series are not supported: stack slices into a volume"
            )
        self.spacing = _as_triplet(self.spacing, "spacing")
        if min(self.spacing) <= 0:
            raise InputError(f"spacing {self.spacing} must be positive in every axis (z, y, x)")
        self.origin = _as_triplet(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise InputError(f"direction must be a finite 3x3 matrix, got {direction!r}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise InputError(f"direction matrix is singular: {direction.tolist()}")
        self.direction = direction
        self.metadata = dict(self.metadata)

    def __repr__(self) -> str:
        return (f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
                f"origin={self.origin}, direction={self.direction.round(6).tolist()})")

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, (Z, Y, X) or (C, Z, Y, X)."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) without the channel axis."""
        return self.shape[-3:]  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """1 for (Z, Y, X) arrays, C for (C, Z, Y, X)."""
        return 1 if len(self.shape) == 3 else self.shape[0]

    @property
    def affine(self) -> np.ndarray:
        """4x4 index (z, y, x) -> physical (z, y, x, LPS) matrix."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        out[:3, 3] = self.origin
        return out

    def index_to_physical(self, index: Any) -> np.ndarray:
        """Physical points (..., 3) (z, y, x) of voxel indices (..., 3) (z, y, x)."""
        idx = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    def with_array(self, array: Any, **metadata: Any) -> Volume:
        """Same geometry with new voxels; ``metadata`` entries update a copy of the metadata."""
        meta = dict(self.metadata)
        meta.update(metadata)
        return replace(self, array=array, direction=self.direction.copy(), metadata=meta)

    def geometry(self) -> dict[str, Any]:
        """JSON-able geometry: ``{"spacing", "origin", "direction"}`` in (z, y, x) order."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
        }


# ----------------------------------------------------------------------------- helpers


def _suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    name = path.name.lower()
    for s in suffixes:
        if name.endswith(s):
            return s
    return None


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


# ----------------------------------------------------------------------------- SimpleITK


def volume_from_sitk(image: Any, *, channel: int | None = None, all_channels: bool = False,
                     path: Path | None = None) -> Volume:
    """Convert a SimpleITK image (3D, 3D vector, or 4D with channels last) to a :class:`Volume`.

    Args:
        image: ``SimpleITK.Image``.
        channel: channel index to keep for multi-channel images.
        all_channels: keep every channel as (C, Z, Y, X) instead of raising.
        path: source path, for messages.
    """
    import SimpleITK as sitk

    path = path or Path("image")
    dim = image.GetDimension()
    if dim < 3:
        _check_spatial(tuple(image.GetSize())[::-1], path)
    if dim > 4:
        raise InputError(f"{path.name} is {dim}D; only 3D volumes (optionally with channels) are supported")
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:  # (Z, Y, X, C) -> (C, Z, Y, X)
        if dim != 3:
            raise InputError(f"{path.name}: vector pixels in a {dim}D image are not supported")
        array = np.moveaxis(array, -1, 0)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = tuple(image.GetSpacing())[:3][::-1]
    origin = tuple(image.GetOrigin())[:3][::-1]
    direction = direction[:3, :3][::-1, ::-1]
    if not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise InputError(
            f"{path.name} has invalid voxel spacing {spacing} (z, y, x); fix the header "
            "(e.g. pixdim in NIfTI, 'space directions' in NRRD) to finite positive values"
        )
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        logger.warning("%s: direction matrix is not orthonormal (%s); the header may be damaged",
                       path.name, direction.round(4).tolist())
    array = _select_channel(array, channel, all_channels, path)
    header = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    meta: dict[str, Any] = {"header": header, "unit": "mm"}
    if CLASS_NAMES_KEY in header:
        with contextlib.suppress(ValueError):
            meta["class_names"] = [str(n) for n in json.loads(header.pop(CLASS_NAMES_KEY))]
    return Volume(np.ascontiguousarray(array), spacing, origin, direction, meta)


def _storable(array: Any) -> np.ndarray:
    """numpy array in a dtype every format stores: bool -> uint8, float16 -> float32."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    return array


def volume_to_sitk(volume: Volume) -> Any:
    """Convert a :class:`Volume` to a ``SimpleITK.Image`` (channels become vector pixels)."""
    import SimpleITK as sitk

    array = _storable(volume.array)
    if array.ndim == 4:
        image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    else:
        image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in volume.origin[::-1]))
    image.SetDirection(tuple(float(d) for d in volume.direction[::-1, ::-1].ravel()))
    if volume.metadata.get("class_names"):  # kept by NRRD and MetaImage headers
        image.SetMetaData(CLASS_NAMES_KEY, json.dumps([str(n) for n in volume.metadata["class_names"]]))
    return image


def _check_nifti(path: Path) -> None:
    """Catch what ITK's NIfTI reader lets through: truncated data (it zero-fills) and
    non-finite pixdim (it silently replaces them)."""
    gz = path.name.lower().endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            head = f.read(544)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeReadError(f"cannot read {path}: corrupt or truncated file ({exc}); re-export it") from exc
    endian = next((e for e in "<>" if len(head) >= 348
                   and struct.unpack(e + "i", head[:4])[0] in (348, 540)), None)
    if endian is None:
        return  # not NIfTI-1/2: ITK reports it
    if struct.unpack(endian + "i", head[:4])[0] == 348:
        dims = struct.unpack(endian + "8h", head[40:56])
        bitpix = struct.unpack(endian + "h", head[72:74])[0]
        pixdim = struct.unpack(endian + "8f", head[76:108])
        vox_offset = int(struct.unpack(endian + "f", head[108:112])[0])
        single_file = head[344:347] == b"n+1"
    else:
        if len(head) < 540:
            raise VolumeReadError(f"cannot read {path}: corrupt or truncated NIfTI-2 header; re-export it")
        bitpix = struct.unpack(endian + "h", head[14:16])[0]
        dims = struct.unpack(endian + "8q", head[16:80])
        pixdim = struct.unpack(endian + "8d", head[104:168])
        vox_offset = int(struct.unpack(endian + "q", head[168:176])[0])
        single_file = head[4:7] == b"n+2"
    ndim = dims[0]
    if not 1 <= ndim <= 7 or min(dims[1:ndim + 1]) < 1:
        raise VolumeReadError(f"cannot read {path}: corrupt NIfTI header (dim = {dims}); re-export it")
    spatial = pixdim[1:min(ndim, 3) + 1]
    if not all(np.isfinite(spatial)):
        raise InputError(
            f"{path.name} has non-finite voxel spacing (pixdim {spatial}); fix pixdim in the "
            "NIfTI header (e.g. nibabel img.header.set_zooms) and save again"
        )
    if not single_file:
        return
    expected = vox_offset + int(np.prod(dims[1:ndim + 1], dtype=np.int64)) * max(bitpix, 8) // 8
    if not gz:
        truncated = path.stat().st_size < expected
    else:
        with open(path, "rb") as f:  # gzip trailer: uncompressed size mod 2**32
            f.seek(-4, os.SEEK_END)
            truncated = struct.unpack("<I", f.read(4))[0] != expected % 2**32
        if truncated:  # or a multi-member gzip: count for real
            count = 0
            with contextlib.suppress(OSError, EOFError, zlib.error), gzip.open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    count += len(chunk)
            truncated = count < expected
    if truncated:
        raise VolumeReadError(
            f"cannot read {path}: the file is truncated (corrupt or incomplete download/copy: "
            f"{expected} bytes of header + voxels expected); copy or export it again"
        )


def _check_data_file(header: Path) -> None:
    """A detached header (.nhdr / .mhd) must find its data file."""
    key = "data file:" if header.name.lower().endswith(".nhdr") else "elementdatafile"
    try:
        lines = header.read_bytes()[:65536].decode("latin-1").splitlines()
    except OSError as exc:
        raise VolumeReadError(f"cannot read {header}: {exc}") from exc
    for line in lines:
        low = line.strip().lower()
        if low.startswith(key) or (key == "data file:" and low.startswith("datafile:")):
            name = line.split("=" if key == "elementdatafile" else ":", 1)[-1].strip()
            if name.upper() in ("LOCAL", "LIST") or name.startswith("LIST") or "%" in name:
                return  # inline data or a file list: let ITK check
            if not (header.parent / name).exists() and not Path(name).exists():
                raise VolumeReadError(
                    f"{header.name} points at the data file {name!r}, which is missing next to it; "
                    "copy the data file along with the header"
                )
            return


def _read_sitk(path: Path, channel: int | None, all_channels: bool) -> Volume:
    import SimpleITK as sitk

    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif path.name.lower().endswith((".nhdr", ".mhd")):
        _check_data_file(path)
    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        if reader.GetDimension() < 3:
            _check_spatial(tuple(reader.GetSize())[::-1], path)
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "rror" in ln), first[-1] if first else "")
        raise VolumeReadError(
            f"cannot read {path}: the file is corrupt, truncated or not a valid "
            f"{_suffix(path, SITK_SUFFIXES)} file ({detail.strip()[:200]}); re-export it"
        ) from exc
    return volume_from_sitk(image, channel=channel, all_channels=all_channels, path=path)


def _read_dicom(folder: Path, channel: int | None, all_channels: bool,
                prefer: Path | None = None) -> Volume:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series and prefer is None:
        # a study folder (e.g. PATIENT/STUDY/SERIES/...): one series below is unambiguous
        found = [d for d in _subfolders(folder) if sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(d))]
        if len(found) == 1:
            logger.info("reading the DICOM series in %s", found[0])
            return _read_dicom(found[0], channel, all_channels)
        if found:
            listing = ", ".join(str(d.relative_to(folder)) for d in found[:6])
            raise VolumeReadError(
                f"{folder} holds {len(found)} DICOM series in sub-folders ({listing}"
                f"{', ...' if len(found) > 6 else ''}); give the folder of the one to open"
            )
    if not series:
        raise VolumeReadError(
            f"no DICOM series found in folder {folder}; give a folder holding the .dcm slices "
            "of one series, or a volume file (.nii.gz, .nrrd, .mha, .tif, .zarr)"
        )
    # the series with the most slices, if the folder holds several
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    sid = max(series, key=lambda s: len(files[s]))
    if prefer is not None:  # the series of the file the user gave
        sid = next((s for s in series if any(Path(f).resolve() == prefer.resolve() for f in files[s])), sid)
    if len(series) > 1:
        logger.warning("%s holds %d DICOM series; reading %s (%d slices)",
                       folder, len(series), sid, len(files[sid]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files[sid])
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot read the DICOM series in {folder}: {str(exc).strip()[-200:]}") from exc
    vol = volume_from_sitk(image, channel=channel, all_channels=all_channels, path=folder)
    first = {k: reader.GetMetaData(0, k) for k in reader.GetMetaDataKeys(0)}
    vol.metadata["header"] = first
    vol.metadata["dicom_series"] = {"series_uid": sid, "all_series": list(series),
                                    "num_files": len(files[sid])}
    return vol


def _subfolders(folder: Path, limit: int = 200) -> list[Path]:
    """Sub-folders of ``folder`` (recursive, sorted), at most ``limit``."""
    out: list[Path] = []
    for root, dirs, _ in os.walk(folder):
        dirs.sort()
        out.extend(Path(root) / d for d in dirs)
        if len(out) >= limit:
            break
    return out[:limit]


def is_dicom_file(path: Path) -> bool:
    """A DICOM Part 10 file (any name) has ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


# ----------------------------------------------------------------------------- dispatch


def read_volume(path: str | os.PathLike, *, channel: int | None = None,
                all_channels: bool = False, lazy: bool = False) -> Volume:
    """Read a volume file or DICOM series folder with its geometry.

    Args:
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, ``.tif``/``.tiff``
            (ImageJ or OME spacing), ``.zarr`` (OME-Zarr level 0 or a plain array), a folder
            holding one DICOM series, or a single ``.dcm`` file (its whole series is read).
        channel: for multi-channel files, the channel to keep (result (Z, Y, X)).
        all_channels: keep every channel as (C, Z, Y, X) instead of asking for ``channel``.
        lazy: for Zarr stores in (Z, Y, X) / (C, Z, Y, X) order, return the zarr array itself
            (voxels load when sliced) instead of a numpy array; other formats always load.

    Returns:
        :class:`Volume` with ``metadata["source"]`` (path) and ``metadata["format"]``.

    Raises:
        VolumeReadError: missing, unreadable, corrupt or truncated file; empty folder;
            unknown extension.
        InputError: 2D image, several channels without ``channel``, non-finite spacing.
    """
    p = Path(path).expanduser()
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
        raise CnnsegError(
            f"cannot write {p}: {str(exc).strip()[-200:]}; choose a writable folder with free space"
        ) from exc
    logger.info("wrote %s", p)
    return p


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success move it onto ``path`` (file or folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{_suffix(path, WRITE_SUFFIXES) or ''}")
    try:
        yield tmp
        if tmp.is_dir():
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
                os.replace(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _write_sitk(path: Path, volume: Volume) -> None:
    import SimpleITK as sitk

    image = volume_to_sitk(volume)
    compress = not path.name.lower().endswith(".nii")
    path.parent.mkdir(parents=True, exist_ok=True)
    if _suffix(path, (".nhdr", ".mhd")):
        # header + separate data file: write both under their final names in a temp
        # folder, move the data file first, then the header that points at it
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmpdir:
            sitk.WriteImage(image, str(Path(tmpdir) / path.name), compress)
            files = sorted(Path(tmpdir).iterdir(), key=lambda f: f.name == path.name)
            for f in files:
                os.replace(f, path.parent / f.name)
        return
    with _atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


# ----------------------------------------------------------------------------- TIFF / Zarr


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (".zgroup", ".zarray", "zarr.json"))


def _geometry_from_record(record: Any, path: Path) -> dict[str, Any]:
    """Our own JSON geometry record -> Volume keyword arguments."""
    try:
        rec = json.loads(record) if isinstance(record, str | bytes) else dict(record)
        out = {k: rec[k] for k in ("spacing", "origin", "direction")}
    except (ValueError, KeyError, TypeError) as exc:
        raise VolumeReadError(f"{path}: damaged cnnseg geometry record ({exc}); re-export the file") from exc
    meta = {k: v for k, v in rec.items() if k not in out}
    return {**out, "metadata": meta}


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


def _tiff_spacing(tif: Any) -> tuple[list[float], str | None]:
    """(z, y, x) spacing and unit from OME or ImageJ metadata (1.0 where absent)."""
    spacing, unit = [1.0, 1.0, 1.0], None
    if tif.is_ome and tif.ome_metadata:
        import tifffile

        ome = tifffile.xml2dict(tif.ome_metadata).get("OME", {})
        image = ome.get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        for i, ax in enumerate("ZYX"):
            if f"PhysicalSize{ax}" in pixels:
                spacing[i] = float(pixels[f"PhysicalSize{ax}"])
        return spacing, _unit(pixels.get("PhysicalSizeXUnit", "µm"))
    if tif.is_shaped and tif.shaped_metadata:  # tifffile's own JSON description
        shaped = tif.shaped_metadata[0]
        for i, ax in enumerate("ZYX"):
            if f"PhysicalSize{ax}" in shaped:
                spacing[i] = float(shaped[f"PhysicalSize{ax}"])
        unit = _unit(shaped.get("PhysicalSizeXUnit"))
    page = tif.pages[0]
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        spacing[0] = float(ij.get("spacing", 1.0))
        unit = _unit(ij.get("unit"))
    for i, tag in ((1, "YResolution"), (2, "XResolution")):
        res = page.tags.get(tag)
        if res is not None and (tif.is_imagej or page.tags.get("ResolutionUnit", None) is not None):
            num, den = res.value
            if num > 0 and den > 0 and not (num == 1 and den == 1 and not tif.is_imagej):
                spacing[i] = den / num
    return spacing, unit


class _CollectErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path, channel: int | None, all_channels: bool) -> Volume:
    import tifffile

    errors = _CollectErrors()  # tifffile logs (not raises) damaged offsets and drops pages
    tiff_log = logging.getLogger("tifffile")
    tiff_log.addHandler(errors)
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data = series.asarray()
            axes = series.axes
            spacing, unit = _tiff_spacing(tif)
            record = tif.pages[0].tags.get(TIFF_GEOMETRY_TAG)
            record = record.value if record is not None else None
            description = tif.pages[0].description
            for page in tif.pages:
                if any(o + c > size for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)):
                    errors.messages.append("image data beyond the end of the file")
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        errors.messages.append(str(exc))
    finally:
        tiff_log.removeHandler(errors)
    if errors.messages:
        raise VolumeReadError(
            f"cannot read {path}: corrupt, truncated or not a TIFF file "
            f"({errors.messages[0][:200]}); re-export it"
        )
    data = _select_channel(_to_czyx(data, axes, path), channel, all_channels, path)
    if record is not None:
        geo = _geometry_from_record(record, path)
        meta = geo.pop("metadata")
        meta.setdefault("unit", unit)
        return Volume(np.ascontiguousarray(data), **geo, metadata=meta)
    meta: dict[str, Any] = {"axes": axes, "unit": unit}
    if description and len(description) < 10000:
        meta["description"] = description
    return Volume(np.ascontiguousarray(data), tuple(spacing), metadata=meta)


def _write_tiff(path: Path, volume: Volume) -> None:
    import tifffile

    data = _storable(volume.array)
    axes = "CZYX" if data.ndim == 4 else "ZYX"
    meta: dict[str, Any] = {"axes": axes}
    unit = _unit(volume.metadata.get("unit"))
    for ax, s in zip("ZYX", volume.spacing, strict=True):
        meta[f"PhysicalSize{ax}"] = s
        if unit in _NGFF_UNITS:  # OME knows these symbols
            meta[f"PhysicalSize{ax}Unit"] = unit
    record = json.dumps({**volume.geometry(), **_portable_metadata(volume)})
    tifffile.imwrite(
        path, data, ome=True, metadata=meta, photometric="minisblack", bigtiff=data.nbytes > 2**31 - 2**25,
        extratags=[(TIFF_GEOMETRY_TAG, "s", 0, record, True)],
    )


def _portable_metadata(volume: Volume) -> dict[str, Any]:
    """The metadata entries worth keeping inside TIFF / Zarr files."""
    out = {k: volume.metadata[k] for k in ("class_names", "name") if k in volume.metadata}
    if _unit(volume.metadata.get("unit")):
        out["unit"] = _unit(volume.metadata["unit"])
    return out


def _is_zarr_group_attrs(attrs: dict) -> dict:
    """OME-NGFF metadata dict (0.4: attrs; 0.5: attrs["ome"])."""
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs


def _read_zarr(path: Path, channel: int | None, all_channels: bool, lazy: bool = False) -> Volume:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for damaged stores
        raise VolumeReadError(f"cannot open {path} as Zarr ({exc}); check that it is a Zarr store") from exc
    attrs = dict(node.attrs)
    ngff = _is_zarr_group_attrs(attrs)
    spacing, origin, axes, unit = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], None, None
    if isinstance(node, zarr.Array):
        array = node
    elif ngff.get("multiscales"):
        ms = ngff["multiscales"][0]
        level = ms["datasets"][0]
        try:
            array = node[level["path"]]
        except KeyError as exc:
            raise VolumeReadError(f"{path}: multiscales level {level['path']!r} is missing; the store is incomplete") from exc
        axes_meta = ms.get("axes") or [{"name": n} for n in "tczyx"[-array.ndim:]]
        names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes_meta]
        scale, trans = np.ones(len(names)), np.zeros(len(names))
        for tr in list(level.get("coordinateTransformations", [])) + list(ms.get("coordinateTransformations", [])):
            if tr.get("type") == "scale":
                scale = scale * np.asarray(tr["scale"], dtype=float)
            elif tr.get("type") == "translation":
                trans = trans + np.asarray(tr["translation"], dtype=float)
        spatial = [i for i, n in enumerate(names) if n in ("z", "y", "x")][-3:]
        if len(spatial) == 3:
            spacing = [float(scale[i]) for i in spatial]
            origin = [float(trans[i]) for i in spatial]
        unit = _unit(next((a.get("unit") for a in axes_meta if isinstance(a, dict) and a.get("unit")), None))
        letters = {"z": "Z", "y": "Y", "x": "X", "c": "C", "t": "T"}
        axes = "".join(letters.get(n, "Q") for n in names)
    else:
        arrays = list(node.array_keys())
        if len(arrays) != 1:
            raise VolumeReadError(
                f"{path} is a Zarr group without OME multiscales metadata holding "
                f"{len(arrays)} arrays {arrays[:5]}; give the path of one array inside it"
            )
        array = node[arrays[0]]
    if array.ndim < 3:
        _check_spatial(tuple(array.shape), path)
    axes = axes or ("CZYX" if array.ndim == 4 else "ZYX")
    if lazy and axes in ("ZYX", "CZYX"):
        # keep the zarr array: voxels load only when sliced (a channel loads on selection)
        data = _select_channel(array, channel, all_channels, path)
    else:
        data = _select_channel(_to_czyx(np.asarray(array[...]), axes, path), channel, all_channels, path)
    record = attrs.get(GEOMETRY_KEY)
    if record is not None:
        geo = _geometry_from_record(record, path)
        return Volume(data, **geo)
    return Volume(data, tuple(spacing), tuple(origin), metadata={"unit": unit} if unit else {})


def _write_zarr(path: Path, volume: Volume) -> None:
    import zarr

    data = _storable(volume.array)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    chunks = tuple(min(s, 64) for s in data.shape[-3:])
    if data.ndim == 4:
        chunks = (1, *chunks)
    arr = root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunks)
    arr[...] = data
    ngff_unit = _NGFF_UNITS.get(_unit(volume.metadata.get("unit")) or "")
    axes = [{"name": n, "type": "space", **({"unit": ngff_unit} if ngff_unit else {})} for n in "zyx"]
    scale, trans = list(volume.spacing), list(volume.origin)
    if data.ndim == 4:
        axes.insert(0, {"name": "c", "type": "channel"})
        scale, trans = [1.0, *scale], [0.0, *trans]
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "name": str(volume.metadata.get("name", path.stem)),
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": trans}]}],
    }]
    root.attrs[GEOMETRY_KEY] = {**volume.geometry(), **_portable_metadata(volume)}
