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

#: environment variable: most bytes one volume may take in memory (default: physical memory)
MAX_BYTES_ENV = "CNNSEG_MAX_VOLUME_BYTES"
#: most voxels any volume may claim, even one read lazily (2**40, ~1.1e12: no 3D scan is larger)
MAX_VOXELS = 2**40
#: most chunks a Zarr array may have (a 2048**3 volume in 64**3 chunks has 32768)
MAX_ZARR_CHUNKS = 2**24
#: largest single Zarr chunk (a tile read decompresses whole chunks)
MAX_ZARR_CHUNK_BYTES = 2**31


def physical_memory() -> int:
    """Bytes of physical memory of this machine (8 GiB when it cannot be found)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 << 30


def max_volume_bytes() -> int:
    """Most bytes a volume read into memory may take: ``$CNNSEG_MAX_VOLUME_BYTES`` or the
    machine's physical memory (a larger one cannot be held, and trying would swap or be killed)."""
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if text:
        with contextlib.suppress(ValueError):
            return max(1, int(float(text)))
    return physical_memory()


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def check_claimed_size(shape: tuple[int, ...], itemsize: int, path: Path, *,
                       in_memory: bool = True) -> None:
    """Refuse, before anything is allocated, a header or store claiming an absurd volume.

    Args:
        shape: the shape the file claims (any number of axes, channels included).
        itemsize: bytes per voxel (times components).
        path: the file, for messages.
        in_memory: the voxels are about to be read into memory: also refuse more bytes than
            :func:`max_volume_bytes`.

    Raises:
        VolumeReadError: a negative or zero-size axis, more than :data:`MAX_VOXELS` voxels, or
            (``in_memory``) more bytes than memory holds. The message gives the limit and why.
    """
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise VolumeReadError(f"{path.name}: its header claims a negative size {shape}; the file is damaged, re-export it")
    if 0 in shape:
        raise VolumeReadError(
            f"{path.name} holds no voxels (shape {shape} has a zero-size axis); re-export the "
            "volume with at least 2 voxels along each axis"
        )
    voxels = 1
    for s in shape:
        voxels *= s
    if voxels > MAX_VOXELS:
        raise VolumeReadError(
            f"{path.name} claims {voxels:.3g} voxels (shape {shape}), more than the limit "
            f"{MAX_VOXELS:.3g} (no 3D scan is that large; the header is probably damaged); "
            "check the file's header or re-export it"
        )
    nbytes = voxels * int(itemsize)
    limit = max_volume_bytes()
    if in_memory and nbytes > limit:
        raise VolumeReadError(
            f"{path.name} claims shape {shape} = {_gb(nbytes)} in memory, more than "
            f"{_gb(limit)} (this machine's memory, or ${MAX_BYTES_ENV}): reading it would "
            "exhaust memory. Check the header; for a really large volume convert it to "
            "OME-Zarr, which is read tile by tile"
        )


def check_zarr_chunks(shape: tuple[int, ...], chunks: tuple[int, ...], itemsize: int,
                      path: Path) -> None:
    """Refuse Zarr metadata whose chunk grid is absurd (too many or too large chunks)."""
    shape, chunks = tuple(int(s) for s in shape), tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or any(c < 1 for c in chunks):
        raise VolumeReadError(f"{path.name}: chunk shape {chunks} does not fit array shape {shape}; the store is damaged")
    count = 1
    size = int(itemsize)
    for s, c in zip(shape, chunks, strict=True):
        count *= -(-s // c)
        size *= c
    if count > MAX_ZARR_CHUNKS:
        raise VolumeReadError(
            f"{path.name}: shape {shape} in chunks of {chunks} makes {count:.3g} chunks (limit "
            f"{MAX_ZARR_CHUNKS:,}: opening or reading so many files would take hours); "
            "re-chunk the store (e.g. 64 voxels per axis)"
        )
    if size > MAX_ZARR_CHUNK_BYTES:
        raise VolumeReadError(
            f"{path.name}: one chunk of {chunks} is {_gb(size)} (limit "
            f"{_gb(MAX_ZARR_CHUNK_BYTES)}: every read decompresses whole chunks); re-chunk the "
            "store (e.g. 64 voxels per axis)"
        )


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
    check_claimed_size(tuple(int(d) for d in dims[1:ndim + 1]), max(bitpix, 8) // 8, path)
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
