"""``cnnseg info FILE [--json]``: shape, dtype and geometry of a volume, in (Z, Y, X) order.

Example::

    $ cnnseg info head.nii.gz --json
    {"shape": [62, 128, 128], "dtype": "int16", "spacing": [3.0, 2.0, 2.0],
     "origin": [0.0, 254.0, 0.0], "direction": [[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]}

The geometry is the one :func:`napari_cnnseg.core.io.read_volume` returns: LPS physical frame,
every vector and both axes of ``direction`` in (z, y, x) order (SimpleITK's values reversed).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

#: the keys of ``--json`` output, in order
KEYS = ("shape", "dtype", "spacing", "origin", "direction")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg info``."""
    p = sub.add_parser(
        "info",
        help="print shape, dtype, spacing, origin and direction of a volume (Z, Y, X order)",
        description=(
            "Print the shape, dtype, spacing, origin and direction of a volume file or DICOM "
            "series folder, all in (Z, Y, X) order, LPS physical frame. Formats: NIfTI, NRRD, "
            "MetaImage, DICOM folder, TIFF (ImageJ/OME), Zarr/OME-Zarr."
        ),
    )
    p.add_argument("file", help="volume file (.nii.gz, .nrrd, .mha, .tif, .zarr, ...) or DICOM folder")
    p.add_argument("--json", action="store_true", help="print one JSON object with keys " + ", ".join(KEYS))
    return p


def describe(path: str) -> dict[str, Any]:
    """Shape, dtype and geometry of the volume at ``path`` (all channels kept)."""
    from ..core.io import read_volume

    vol = read_volume(path, all_channels=True, lazy=True)  # Zarr voxels are not loaded
    return {
        "shape": list(vol.shape),
        "dtype": str(vol.array.dtype),
        "spacing": [float(v) + 0.0 for v in vol.spacing],  # + 0.0: no "-0.0" in the JSON
        "origin": [float(v) + 0.0 for v in vol.origin],
        "direction": [[float(v) + 0.0 for v in row] for row in vol.direction],
        "_format": vol.metadata.get("format"),
        "_unit": vol.metadata.get("unit"),
    }


def _fmt(values: list[float]) -> str:
    return "(" + ", ".join(f"{v + 0.0:.6g}" for v in values) + ")"  # no "-0"


def run(args: argparse.Namespace) -> int:
    """Print the description; errors propagate as ``CnnsegError`` (exit code 2)."""
    info = describe(args.file)
    if args.json:
        print(json.dumps({k: info[k] for k in KEYS}))
        return 0
    unit = f" {info['_unit']}" if info["_unit"] else ""
    channels = " (C, Z, Y, X)" if len(info["shape"]) == 4 else " (Z, Y, X)"
    print(f"file:      {args.file}  [{info['_format']}]")
    print(f"shape:     {_fmt(info['shape'])}{channels}")
    print(f"dtype:     {info['dtype']}")
    print(f"spacing:   {_fmt(info['spacing'])}{unit} (z, y, x)")
    print(f"origin:    {_fmt(info['origin'])}{unit} (z, y, x, LPS)")
    rows = [_fmt(r) for r in info["direction"]]
    print(f"direction: {rows[0]}  rows/columns in (z, y, x) order")
    for r in rows[1:]:
        print(f"           {r}")
    return 0
