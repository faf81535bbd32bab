"""Header and truncation checks for what ITK's readers let through."""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import InputError, VolumeReadError


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
