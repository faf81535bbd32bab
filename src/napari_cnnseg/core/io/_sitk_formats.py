"""NIfTI, NRRD, MetaImage and DICOM through SimpleITK."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, VolumeReadError
from ._arrays import _check_spatial, _select_channel, _storable
from ._atomic import _atomic_path
from ._checks import _check_data_file, _check_nifti, check_claimed_size
from ._suffixes import SITK_SUFFIXES, _suffix
from .volume import Volume

logger = logging.getLogger(__package__)  # one "napari_cnnseg.core.io" logger for the package


#: NRRD / MetaImage header key holding the class names (JSON list)
CLASS_NAMES_KEY = "cnnseg_class_names"


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
        # refuse an absurd header before ITK allocates the voxels
        check_claimed_size(tuple(reader.GetSize()), reader.GetNumberOfComponents()
                           * _sitk_itemsize(reader.GetPixelID()), path)
        image = reader.Execute()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "ERROR" in ln or "rror" in ln), first[-1] if first else "")
        raise VolumeReadError(
            f"cannot read {path}: the file is corrupt, truncated or not a valid "
            f"{_suffix(path, SITK_SUFFIXES)} file ({detail.strip()[:200]}); re-export it"
        ) from exc
    return volume_from_sitk(image, channel=channel, all_channels=all_channels, path=path)


def _sitk_itemsize(pixel_id: int) -> int:
    """Bytes per component of a SimpleITK pixel type (8 when unknown: errs on the safe side)."""
    import SimpleITK as sitk

    name = sitk.GetPixelIDValueAsString(pixel_id).lower()
    for key, size in (("complex", 16), ("64", 8), ("32", 4), ("16", 2), ("8", 1)):
        if key in name:
            return size
    return 8


def _read_dicom(folder: Path, channel: int | None, all_channels: bool,
                prefer: Path | None = None) -> Volume:
    import SimpleITK as sitk

    series = _series_ids(folder)
    if not series and prefer is None:
        # a study folder (e.g. PATIENT/STUDY/SERIES/...): one series below is unambiguous
        found = [d for d in _subfolders(folder) if _series_ids(d)]
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
    _check_series_size(files[sid], folder)  # an absurd header is refused before ITK allocates
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


def _check_series_size(files: tuple[str, ...], folder: Path) -> None:
    """Refuse a DICOM series whose header claims an absurd volume, before the voxels exist.

    ITK allocates the whole series from its first file's header (rows x columns x frames) times
    the number of files, then reads the slices: a damaged or hostile header claiming 65535 x
    65535 pixels would have it allocate tens of GB. The claim is checked against
    ``check_claimed_size`` (at most ``MAX_VOXELS`` voxels and the memory limit) first; a file
    whose header cannot be read is left for the reader's own error.
    """
    import SimpleITK as sitk

    info = sitk.ImageFileReader()
    info.SetFileName(str(files[0]))
    try:
        info.ReadImageInformation()
    except RuntimeError:
        return
    size = [int(v) for v in info.GetSize()]  # (x, y) or (x, y, frames)
    frames = size[2] if len(size) > 2 else 1
    itemsize = info.GetNumberOfComponents() * _sitk_itemsize(info.GetPixelID())
    check_claimed_size((len(files) * frames, size[1], size[0]), itemsize, folder)


def _series_ids(folder: Path) -> tuple[str, ...]:
    """GDCM series IDs in ``folder``, without ITK's multi-line "No Series were found" warning
    on stderr for every folder that holds none (our own error says it in one line)."""
    import SimpleITK as sitk

    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


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
