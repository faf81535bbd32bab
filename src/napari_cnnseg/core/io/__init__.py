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
folder, then :func:`os.replace`). :class:`ZarrVolumeWriter` creates an empty Zarr volume to
fill piece by piece (outputs larger than memory) and commits it the same way.
"""

from ._dispatch import read_volume, write_volume
from ._sitk_formats import CLASS_NAMES_KEY, is_dicom_file, volume_from_sitk, volume_to_sitk
from ._stream import ZarrVolumeWriter
from ._suffixes import (
    DICOM_SUFFIXES,
    READ_SUFFIXES,
    SITK_SUFFIXES,
    TIFF_SUFFIXES,
    WRITE_SUFFIXES,
    ZARR_SUFFIXES,
)
from ._tiff import TIFF_GEOMETRY_TAG
from ._zarr import GEOMETRY_KEY
from .volume import Volume

__all__ = [
    "CLASS_NAMES_KEY",
    "DICOM_SUFFIXES",
    "GEOMETRY_KEY",
    "READ_SUFFIXES",
    "SITK_SUFFIXES",
    "TIFF_GEOMETRY_TAG",
    "TIFF_SUFFIXES",
    "WRITE_SUFFIXES",
    "ZARR_SUFFIXES",
    "Volume",
    "ZarrVolumeWriter",
    "is_dicom_file",
    "read_volume",
    "volume_from_sitk",
    "volume_to_sitk",
    "write_volume",
]
