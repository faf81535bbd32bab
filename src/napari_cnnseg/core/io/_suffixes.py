"""File name endings per format and the helper that matches them."""

from __future__ import annotations

from pathlib import Path

#: file name endings read through SimpleITK, longest first
SITK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
TIFF_SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")
ZARR_SUFFIXES = (".ome.zarr", ".zarr")
DICOM_SUFFIXES = (".dcm",)
READ_SUFFIXES = SITK_SUFFIXES + TIFF_SUFFIXES + ZARR_SUFFIXES + DICOM_SUFFIXES
WRITE_SUFFIXES = SITK_SUFFIXES + TIFF_SUFFIXES + ZARR_SUFFIXES


def _suffix(path: Path, suffixes: tuple[str, ...]) -> str | None:
    name = path.name.lower()
    for s in suffixes:
        if name.endswith(s):
            return s
    return None
