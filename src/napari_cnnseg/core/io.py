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
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError, VolumeReadError

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


@dataclass
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
        f"channel=0..{n - 1} (CLI: --channel)"
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
    array = _select_channel(array, channel, all_channels, path)
    header = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    return Volume(np.ascontiguousarray(array), spacing, origin, direction,
                  {"header": header})


def volume_to_sitk(volume: Volume) -> Any:
    """Convert a :class:`Volume` to a ``SimpleITK.Image`` (channels become vector pixels)."""
    import SimpleITK as sitk

    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    if array.ndim == 4:
        image = sitk.GetImageFromArray(np.moveaxis(array, 0, -1), isVector=True)
    else:
        image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in volume.origin[::-1]))
    image.SetDirection(tuple(float(d) for d in volume.direction[::-1, ::-1].ravel()))
    return image


def _read_sitk(path: Path, channel: int | None, all_channels: bool) -> Volume:
    import SimpleITK as sitk

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


def _read_dicom(folder: Path, channel: int | None, all_channels: bool) -> Volume:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise VolumeReadError(
            f"no DICOM series found in folder {folder}; give a folder holding the .dcm slices "
            "of one series, or a volume file (.nii.gz, .nrrd, .mha, .tif, .zarr)"
        )
    # the series with the most slices, if the folder holds several
    files = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series}
    sid = max(series, key=lambda s: len(files[s]))
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


# ----------------------------------------------------------------------------- dispatch


def read_volume(path: str | os.PathLike, *, channel: int | None = None,
                all_channels: bool = False) -> Volume:
    """Read a volume file or DICOM series folder with its geometry.

    Args:
        path: ``.nii``/``.nii.gz``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``, ``.tif``/``.tiff``
            (ImageJ or OME spacing), ``.zarr`` (OME-Zarr level 0 or a plain array), a folder
            holding one DICOM series, or a single ``.dcm`` file (its whole series is read).
        channel: for multi-channel files, the channel to keep (result (Z, Y, X)).
        all_channels: keep every channel as (C, Z, Y, X) instead of asking for ``channel``.

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
        fmt, vol = "zarr", _read_zarr(p, channel, all_channels)
    elif _suffix(p, SITK_SUFFIXES):
        fmt, vol = _suffix(p, SITK_SUFFIXES).lstrip("."), _read_sitk(p, channel, all_channels)
    elif _suffix(p, TIFF_SUFFIXES):
        fmt, vol = "tiff", _read_tiff(p, channel, all_channels)
    elif _suffix(p, DICOM_SUFFIXES):
        fmt, vol = "dicom", _read_dicom(p.parent, channel, all_channels)
    else:
        raise VolumeReadError(
            f"unknown file type {p.name!r}; supported: {', '.join(READ_SUFFIXES)} "
            "or a DICOM series folder (rename the file or convert it)"
        )
    vol.metadata.setdefault("source", str(p))
    vol.metadata["format"] = fmt
    logger.debug("read %s: shape %s spacing %s", p, vol.shape, vol.spacing)
    return vol


def write_volume(path: str | os.PathLike, volume: Volume) -> Path:
    """Write a volume with its geometry; the format follows the file name ending.

    NIfTI stores geometry as float32 (and converts LPS to RAS); NRRD, MetaImage, TIFF
    (our private tag + OME metadata) and Zarr (OME-Zarr 0.4 + ``cnnseg`` attributes) keep
    float64. ``bool`` is written as uint8 and float16 as float32 (except TIFF/Zarr).

    Args:
        path: destination; ``.nii``/``.nii.gz``/``.nrrd``/``.nhdr``/``.mha``/``.mhd``/
            ``.tif``/``.tiff``/``.zarr``. Missing parent folders are created.
        volume: the :class:`Volume` to write.

    Returns:
        The written path. The write is atomic: readers never see a half-written file.

    Raises:
        InputError: unknown extension or an invalid volume.
    """
    p = Path(path).expanduser()
    if not isinstance(volume, Volume):
        raise InputError(f"write_volume needs a Volume, got {type(volume).__name__}; wrap arrays with Volume(array, spacing, ...)")
    if _suffix(p, ZARR_SUFFIXES):
        with _atomic_path(p) as tmp:
            _write_zarr(tmp, volume)
    elif _suffix(p, SITK_SUFFIXES):
        _write_sitk(p, volume)
    elif _suffix(p, TIFF_SUFFIXES):
        with _atomic_path(p) as tmp:
            _write_tiff(tmp, volume)
    else:
        raise InputError(
            f"cannot write {p.name!r}: unknown extension; use one of {', '.join(WRITE_SUFFIXES)}"
        )
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


def _read_tiff(path: Path, channel: int | None, all_channels: bool) -> Volume:
    raise VolumeReadError(f"TIFF reading is not available yet ({path})")


def _write_tiff(path: Path, volume: Volume) -> None:
    raise InputError(f"TIFF writing is not available yet ({path})")


def _read_zarr(path: Path, channel: int | None, all_channels: bool) -> Volume:
    raise VolumeReadError(f"Zarr reading is not available yet ({path})")


def _write_zarr(path: Path, volume: Volume) -> None:
    raise InputError(f"Zarr writing is not available yet ({path})")
