"""The standing bad-input suite: every case, one table (used by tests/test_bad_inputs.py and
``python tests/test_bad_inputs_cases.py --table`` which writes the table in docs/reliability.md).

Each :class:`Case` builds one bad input in a fresh folder that already holds a small valid kit
(image, scribbles, ground truth, a tiny checkpoint), runs it on one surface (Python API, a
``cnnseg`` subcommand, the 3D Slicer module) and states what the user must see: a message
matching ``match``. The runner checks, for every case: the error is a ``CnnsegError`` (API) or
exit code 2 with one ``error:`` line and no traceback (CLI, Slicer), no file appeared (nothing
partial under a final name, no temporary left behind) and every file that was there before is
byte-for-byte unchanged.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SHAPE = (8, 20, 20)
SPACING = (2.0, 0.5, 0.5)


@dataclass
class Case:
    id: str
    surface: str  # "API", "cnnseg info", ..., "Slicer module"
    what: str  # the bad input, in words
    build: Callable[[Path], Any]  # -> argv list (CLI / Slicer) or a zero-argument callable (API)
    match: str  # regex the message must match
    env: dict[str, str] | None = None


# ---------------------------------------------------------------- the valid kit
def make_kit(d: Path) -> dict[str, Path]:
    """A valid image, scribbles, ground truth and tiny 2-class checkpoint in ``d``."""
    from napari_cnnseg.core.io import Volume, write_volume
    from napari_cnnseg.core.models import build_model, save_model

    rng = np.random.default_rng(0)
    gt = np.zeros(SHAPE, np.uint8)
    gt[2:6, 5:15, 5:15] = 1
    image = (gt + 0.2 * rng.standard_normal(SHAPE)).astype(np.float32)
    scr = np.zeros(SHAPE, np.uint8)
    scr[4, 8:12, 10] = 2
    scr[4, 1:4, 1:18] = 1
    d.mkdir(parents=True, exist_ok=True)
    out = {
        "img": write_volume(d / "img.nii.gz", Volume(image, spacing=SPACING)),
        "scr": write_volume(d / "scr.nrrd", Volume(scr, spacing=SPACING)),
        "gt": write_volume(d / "gt.nii.gz", Volume(gt, spacing=SPACING)),
    }
    net = build_model("unet", num_classes=2, depth=1, base_width=4, anisotropic_levels=1)
    out["model"] = save_model(d / "model", net, class_names=["background", "box"])
    return out


def _vol(a, **kw):
    from napari_cnnseg.core.io import Volume

    return Volume(a, spacing=kw.pop("spacing", SPACING), **kw)


def _write(p: Path, a, **kw) -> Path:
    from napari_cnnseg.core.io import write_volume

    return write_volume(p, _vol(a, **kw))


def _scr(d: Path, values, dtype=np.float32, name="bad_scr.nrrd", shape=SHAPE, spacing=SPACING) -> Path:
    s = np.zeros(shape, dtype)
    flat = s.reshape(-1)
    flat[: len(values) * 7: 7] = values
    return _write(d / name, s, spacing=spacing)


def _nrrd_header(d: Path, sizes: str, encoding: str = "raw", name: str = "bad.nrrd",
                 payload: bytes = b"\0" * 64) -> Path:
    p = d / name
    p.write_bytes(f"NRRD0004\ntype: short\ndimension: {len(sizes.split())}\nsizes: {sizes}\n"
                  f"encoding: {encoding}\nendian: little\nspacings: 1 1 1\n\n".encode() + payload)
    return p


def _nifti_header(d: Path, dims, pixdim=(1.0, 1.0, 1.0), gz=True, data=b"\0" * 1000) -> Path:
    h = bytearray(352)
    struct.pack_into("<i", h, 0, 348)
    struct.pack_into("<8h", h, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<h", h, 70, 4)  # int16
    struct.pack_into("<h", h, 72, 16)
    struct.pack_into("<8f", h, 76, 1.0, *pixdim, 1, 1, 1, 1)
    struct.pack_into("<f", h, 108, 352.0)
    h[344:348] = b"n+1\0"
    raw = bytes(h) + data
    p = d / ("hdr.nii.gz" if gz else "hdr.nii")
    p.write_bytes(gzip.compress(raw) if gz else raw)
    return p


def _zarr(d: Path, shape, chunks, name="bad.zarr") -> Path:
    import zarr

    zarr.open_array(str(d / name), mode="w", shape=shape, chunks=chunks, dtype="f4", zarr_format=2)
    return d / name


def _tiff(d: Path, a, name="bad.tif", **kw) -> Path:
    import tifffile

    tifffile.imwrite(d / name, a, **kw)
    return d / name


def _sidecar(d: Path, change: Callable[[dict], Any] | None = None, text: str | None = None,
             name: str = "model") -> Path:
    """A copy of the kit's checkpoint whose sidecar is edited (dict) or replaced (text)."""
    import shutil

    stem = d / f"bad_{name}"
    shutil.copy(d / "model.safetensors", stem.with_suffix(".safetensors"))
    doc = json.loads((d / "model.json").read_text(encoding="utf-8"))
    if change is not None:
        doc = change(doc) or doc
    stem.with_suffix(".json").write_text(text if text is not None else json.dumps(doc))
    return stem.with_suffix(".json")


def _weights(d: Path, data: bytes) -> Path:
    """A copy of the kit's checkpoint with other weights bytes (and no checksum to hide them)."""
    p = _sidecar(d, lambda doc: {**doc, "weights_sha256": None}, name="w")
    p.with_suffix(".safetensors").write_bytes(data)
    return p


def _st_header(header: dict, tail: bytes = b"\0" * 16) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + tail


def _other_shapes(d: Path) -> bytes:
    import safetensors.torch as st
    import torch

    from napari_cnnseg.core.models import load_model

    sd = {k: v.clone() for k, v in load_model(d / "model").state_dict().items()}
    first = next(iter(sd))
    sd[first] = torch.zeros(3, 3)
    st.save_file(sd, str(d / "tmp_other.safetensors"))
    data = (d / "tmp_other.safetensors").read_bytes()
    (d / "tmp_other.safetensors").unlink()
    return data


def _loop(d: Path, suffix=".nii.gz") -> Path:
    a, b = d / f"loop_a{suffix}", d / f"loop_b{suffix}"
    os.symlink(b, a)
    os.symlink(a, b)
    return a


def _api(fn: Callable[[], Any]) -> Callable[[], Any]:
    return fn


def _dicom_absurd(d: Path, rows: int = 65535, cols: int = 65535) -> Path:
    """A 3-slice DICOM series (SimpleITK, implicit VR little endian) whose every slice's header
    then claims ``rows`` x ``cols`` pixels (the pixel data stays 8 x 8): ITK would allocate
    3 x rows x cols int16 for it."""
    import SimpleITK as sitk

    folder = d / "dcm"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.43"
    for k in range(3):
        sl = sitk.GetImageFromArray(np.zeros((8, 8), np.int16))
        for tag, value in (("0020|000e", uid), ("0020|000d", uid + ".1"), ("0008|0060", "CT"),
                           ("0020|0032", f"0\\0\\{k}"), ("0020|0013", str(k)),
                           ("0008|0018", f"{uid}.{k + 2}")):
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{k}.dcm"))
        writer.Execute(sl)
        data = bytearray((folder / f"s{k}.dcm").read_bytes())
        for elem, value in ((0x10, rows), (0x11, cols)):  # (0028,0010) Rows, (0028,0011) Columns
            i = data.find(bytes([0x28, 0, elem, 0, 2, 0, 0, 0]), 132)
            assert i > 0, "Rows/Columns element not found"
            data[i + 8:i + 10] = value.to_bytes(2, "little")
        (folder / f"s{k}.dcm").write_bytes(bytes(data))
    return folder


# ---------------------------------------------------------------- API callables
def _read(p):
    from napari_cnnseg.core.io import read_volume

    return lambda: read_volume(p)


def _load(p):
    from napari_cnnseg.core.models import load_model

    return lambda: load_model(p)


def _finetune(d: Path, scribbles=None, image=None, **kw):
    from napari_cnnseg.core.io import read_volume
    from napari_cnnseg.core.models import load_model
    from napari_cnnseg.core.training import finetune

    def call():
        img = read_volume(d / "img.nii.gz").array if image is None else image
        scr = read_volume(d / "scr.nrrd").array if scribbles is None else scribbles
        opts = {"steps": 1, "crop_shape": (4, 8, 8), "batch_size": 1, **kw}
        return finetune(load_model(d / "model"), img, scr, **opts)
    return call


def _segment(d: Path, image=None, **kw):
    from napari_cnnseg.core.io import read_volume
    from napari_cnnseg.core.models import load_model
    from napari_cnnseg.core.pipeline import segment_volume

    def call():
        vol = read_volume(d / "img.nii.gz")
        if image is not None:
            vol = vol.with_array(image)
        return segment_volume(vol, load_model(d / "model"), **kw)
    return call


def _session(d: Path, scribbles):
    from napari_cnnseg._session import Session
    from napari_cnnseg.core.io import read_volume

    def call():
        s = Session(autosave_folder=d / "autosave_unused")
        s.set_image(read_volume(d / "img.nii.gz"), name="img")
        s.load_model(str(d / "model.json"))
        return s.check_scribbles(scribbles)
    return call


def _write_api(p, a=None):
    from napari_cnnseg.core.io import write_volume

    return lambda: write_volume(p, _vol(np.zeros(SHAPE, np.uint8) if a is None else a))


def _scr_array(values, dtype=np.float32, shape=SHAPE):
    s = np.zeros(shape, dtype)
    s.reshape(-1)[: len(values) * 7: 7] = values
    return s


# ---------------------------------------------------------------- the cases
def _cases() -> list[Case]:
    c: list[Case] = []

    def add(id_, surface, what, build, match, env=None):
        c.append(Case(id_, surface, what, build, match, env))

    img = lambda d: str(d / "img.nii.gz")  # noqa: E731
    mdl = lambda d: str(d / "model.json")  # noqa: E731
    scr = lambda d: str(d / "scr.nrrd")  # noqa: E731

    # ---- files, read through the Python API
    A = "API read_volume"
    add("read-missing", A, "a path that does not exist", lambda d: _read(d / "nope.nii.gz"), "does not exist")
    add("read-empty-nifti", A, "an empty (0-byte) .nii.gz", lambda d: (
        (d / "e.nii.gz").write_bytes(b""), _read(d / "e.nii.gz"))[1], "corrupt|truncated")
    add("read-truncated-niigz", A, "a .nii.gz cut in half", lambda d: (
        (d / "t.nii.gz").write_bytes((d / "img.nii.gz").read_bytes()[:300]), _read(d / "t.nii.gz"))[1],
        "corrupt|truncated")
    add("read-truncated-nii", A, "an uncompressed .nii missing its last voxels", lambda d: (
        (d / "t.nii").write_bytes(gzip.decompress((d / "img.nii.gz").read_bytes())[:-500]),
        _read(d / "t.nii"))[1], "truncated")
    add("read-garbage-nrrd", A, "random bytes named .nrrd", lambda d: (
        (d / "g.nrrd").write_bytes(os.urandom(4096)), _read(d / "g.nrrd"))[1], "corrupt|not a valid")
    add("read-text-as-tiff", A, "a text file named .tif", lambda d: (
        (d / "x.tif").write_text("hello"), _read(d / "x.tif"))[1], "not a TIFF|corrupt")
    add("read-2d-tiff", A, "a 2D image (one slice)", lambda d: _read(_tiff(d, np.zeros((20, 20), np.uint8))),
        "2D")
    add("read-single-slice", A, "a 1x20x20 volume (a single slice)", lambda d: _read(
        _write(d / "s.nrrd", np.zeros((1, 20, 20), np.uint8))), "single 2D slice")
    add("read-5d-tiff", A, "a 5D TIFF (2 time points)", lambda d: _read(_tiff(
        d, np.zeros((2, 2, 4, 8, 8), np.uint8), metadata={"axes": "TCZYX"})),
        "not supported|time")
    add("read-4ch-nochannel", A, "a 3-channel volume without choosing a channel", lambda d: _read(_tiff(
        d, np.zeros((3, 4, 8, 8), np.uint8), metadata={"axes": "CZYX"})), "channel=0..2")
    add("read-nrrd-absurd", A, "an NRRD header claiming 10^15 voxels", lambda d: _read(
        _nrrd_header(d, "100000 100000 100000")), "claims .* voxels.*limit")
    add("read-nrrd-over-memory", A, "an NRRD header claiming more bytes than memory allows",
        lambda d: _read(_nrrd_header(d, "1000 1000 1000", encoding="gzip")), "exhaust memory",
        env={"CNNSEG_MAX_VOLUME_BYTES": str(10**8)})
    add("read-nrrd-truncated", A, "an NRRD whose raw data is shorter than its header says",
        lambda d: _read(_nrrd_header(d, "10 10 10")), "corrupt|truncated")
    add("read-dicom-absurd-rows", A, "a DICOM series whose slices claim 65535 x 65535 pixels",
        lambda d: _read(_dicom_absurd(d)), r"claims shape \(3, 65535, 65535\).*exhaust memory",
        env={"CNNSEG_MAX_VOLUME_BYTES": str(10**9)})
    add("read-dicom-file-absurd-rows", A, "one .dcm file of that series (its series is read)",
        lambda d: _read(_dicom_absurd(d) / "s1.dcm"), "claims shape .*exhaust memory",
        env={"CNNSEG_MAX_VOLUME_BYTES": str(10**9)})
    add("read-nifti-absurd", A, "a NIfTI header claiming 30000^3 voxels", lambda d: _read(
        _nifti_header(d, (30000, 30000, 30000))), "claims .* voxels.*limit")
    add("read-nifti-absurd-raw", A, "an uncompressed NIfTI claiming 3000^3 voxels", lambda d: _read(
        _nifti_header(d, (3000, 3000, 3000), gz=False)), "truncated|exhaust memory")
    add("read-nifti-nan-pixdim", A, "a NIfTI with NaN voxel spacing", lambda d: _read(
        _nifti_header(d, (4, 4, 4), pixdim=(float("nan"), 1.0, 1.0), data=b"\0" * 128)),
        "non-finite voxel spacing")
    add("read-nifti-zero-dim", A, "a NIfTI header with a zero-size axis", lambda d: _read(
        _nifti_header(d, (4, 0, 4))), "corrupt NIfTI header")
    add("read-zarr-absurd-shape", A, "Zarr metadata claiming 10^18 voxels", lambda d: _read(
        _zarr(d, (10**6,) * 3, (64, 64, 64))), "chunks.*limit|voxels.*limit")
    add("read-zarr-chunk-count", A, "a Zarr array of 1000^3 in 1-voxel chunks", lambda d: _read(
        _zarr(d, (1000,) * 3, (1, 1, 1))), "1e\\+09 chunks.*limit")
    add("read-zarr-huge-chunk", A, "a Zarr array with one 32 GB chunk", lambda d: _read(
        _zarr(d, (2000,) * 3, (2000,) * 3)), "one chunk .* GB.*limit")
    add("read-zarr-zero-axis", A, "a Zarr array with a zero-size axis", lambda d: _read(
        _zarr(d, (0, 10, 10), (1, 10, 10))), "no voxels")
    add("read-zarr-corrupt-meta", A, "a Zarr store whose .zarray is not JSON", lambda d: (
        _zarr(d, (4, 4, 4), (4, 4, 4)), (d / "bad.zarr" / ".zarray").write_text("{not json"),
        _read(d / "bad.zarr"))[2], "cannot open|Zarr")
    add("read-empty-folder", A, "an empty folder", lambda d: ((d / "empty").mkdir(), _read(d / "empty"))[1],
        "empty")
    add("read-folder-no-dicom", A, "a folder of text files (no DICOM series)", lambda d: (
        (d / "txt").mkdir(), (d / "txt" / "a.txt").write_text("x"), _read(d / "txt"))[2], "no DICOM series")
    add("read-symlink-loop", A, "a symbolic link loop", lambda d: _read(_loop(d)), "loop")
    add("read-broken-symlink", A, "a symbolic link to a missing file", lambda d: (
        os.symlink(d / "gone.nii.gz", d / "link.nii.gz"), _read(d / "link.nii.gz"))[1], "link to nothing")
    add("read-unknown-suffix", A, "a file with an unknown ending (.xyz)", lambda d: (
        (d / "a.xyz").write_text("x"), _read(d / "a.xyz"))[1], "unknown file type")

    W = "API write_volume / Volume"
    add("write-parent-is-file", W, "an output whose parent folder is a file", lambda d: _write_api(
        d / "img.nii.gz" / "out.nrrd"), "is a file, not a folder")
    add("write-unwritable", W, "an output in an unwritable place (/proc)", lambda d: _write_api(
        Path("/proc/cnnseg_bad_inputs/out.nrrd")), "cannot write")
    add("write-unknown-suffix", W, "an output ending in .png", lambda d: _write_api(d / "out.png"),
        "unknown extension")
    add("volume-2d", W, "a 2D array as a volume", lambda d: lambda: _vol(np.zeros((20, 20))), "3D volume")
    add("volume-5d", W, "a 5D array as a volume", lambda d: lambda: _vol(np.zeros((1, 2, 4, 4, 4))), "3D volume")
    add("volume-nan-spacing", W, "NaN voxel spacing", lambda d: lambda: _vol(
        np.zeros(SHAPE), spacing=(float("nan"), 1, 1)), "not finite")
    add("volume-zero-spacing", W, "zero voxel spacing", lambda d: lambda: _vol(
        np.zeros(SHAPE), spacing=(0, 1, 1)), "positive")
    add("volume-singular-direction", W, "a singular direction matrix", lambda d: lambda: _vol(
        np.zeros(SHAPE), direction=np.zeros((3, 3))), "singular")

    # ---- checkpoints (untrusted files)
    M = "API load_model"
    add("ckpt-pickle", M, "a pickle-based .pt file", lambda d: (
        (d / "m.pt").write_bytes(b"\x80\x04K\x01."), _load(d / "m.pt"))[1], "pickle")
    add("ckpt-no-sidecar", M, "weights without their JSON sidecar", lambda d: (
        (d / "lone.safetensors").write_bytes((d / "model.safetensors").read_bytes()),
        _load(d / "lone.safetensors"))[1], "sidecar .* not found")
    add("ckpt-deep-json", M, "a sidecar nested 100,000 levels deep", lambda d: _load(
        _sidecar(d, text="[" * 100000 + "]" * 100000)), "100000 levels deep.*limit 32")
    add("ckpt-huge-number", M, "a sidecar holding a 5000-digit number", lambda d: _load(
        _sidecar(d, text='{"format": "napari-cnnseg-model", "format_version": ' + "9" * 5000 + "}")),
        "number of 5000 characters.*limit")
    add("ckpt-nan", M, "a sidecar holding NaN", lambda d: _load(
        _sidecar(d, text='{"format": "napari-cnnseg-model", "format_version": NaN}')), "NaN")
    add("ckpt-big-sidecar", M, "a 2 MB sidecar", lambda d: _load(
        _sidecar(d, lambda doc: {**doc, "pad": "x" * (2 << 20)})), "limit 1048576")
    add("ckpt-binary-sidecar", M, "a sidecar of binary bytes", lambda d: (
        _sidecar(d, text=""), (d / "bad_model.json").write_bytes(os.urandom(256)), _load(d / "bad_model.json"))[2],
        "not valid JSON")
    add("ckpt-not-ours", M, "a JSON sidecar from another tool", lambda d: _load(
        _sidecar(d, text='{"model_type": "sam"}')), "not a napari-cnnseg model sidecar")
    add("ckpt-code-arch", M, "an architecture name that looks like code", lambda d: _load(_sidecar(
        d, lambda doc: {**doc, "arch": "__import__('os').system('touch pwned')"})), "unknown model architecture")
    add("ckpt-unknown-key", M, "an unknown config key", lambda d: _load(_sidecar(
        d, lambda doc: {**doc, "config": {**doc["config"], "exec": "print(1)"}})), "unknown option")
    add("ckpt-code-value", M, "a config value that looks like code", lambda d: _load(_sidecar(
        d, lambda doc: {**doc, "config": {**doc["config"], "depth": "eval('1')"}})), "depth must be")
    add("ckpt-huge-arch", M, "a config asking for 10^15 parameters", lambda d: _load(_sidecar(
        d, lambda doc: {**doc, "config": {**doc["config"], "base_width": 10**6}})), "parameters \\(limit")
    add("ckpt-newer-format", M, "a checkpoint from a newer format version", lambda d: _load(_sidecar(
        d, lambda doc: {**doc, "format_version": 99})), "upgrade napari-cnnseg")
    add("ckpt-checksum", M, "weights that do not match the sidecar's checksum", lambda d: _load(_sidecar(
        d, lambda doc: {**doc, "weights_sha256": "0" * 64})), "checksum differs")
    add("ckpt-sidecar-folder", M, "a sidecar path that is a folder", lambda d: (
        (d / "dirmodel.json").mkdir(), (d / "dirmodel.safetensors").write_bytes(b""),
        _load(d / "dirmodel.json"))[2], "not found")
    add("ckpt-exabyte-header", M, "a safetensors header claiming a 4e27-byte tensor", lambda d: _load(_weights(
        d, _st_header({"w": {"dtype": "F32", "shape": [10**9] * 3, "data_offsets": [0, 4 * 10**27]}}))),
        "number of|needs .* bytes")
    add("ckpt-exabyte-small-numbers", M, "a safetensors header claiming 2^60 bytes of tensor", lambda d: _load(
        _weights(d, _st_header({"w": {"dtype": "F32", "shape": [2**20, 2**20, 2**18],
                                      "data_offsets": [0, 2**60]}}))), "needs .* bytes")
    add("ckpt-header-length", M, "a safetensors header length of 2^60 bytes", lambda d: _load(
        _weights(d, struct.pack("<Q", 2**60) + b"{" + b"\0" * 16)), "limit 16777216")
    add("ckpt-bad-dtype", M, "a safetensors tensor of an unknown dtype", lambda d: _load(_weights(
        d, _st_header({"w": {"dtype": "X99", "shape": [2], "data_offsets": [0, 8]}}))), "malformed")
    add("ckpt-shapes-disagree", M, "tensors whose shapes disagree with the JSON architecture",
        lambda d: _load(_weights(d, _other_shapes(d))), "has shape .* but the architecture")
    add("ckpt-truncated-weights", M, "weights cut in half", lambda d: _load(_weights(
        d, (d / "model.safetensors").read_bytes()[:200])), "not a safetensors|needs .* bytes")
    add("ckpt-renamed-zip", M, "a zip (torch.save) renamed .safetensors", lambda d: _load(_weights(
        d, b"PK\x03\x04" + os.urandom(200))), "not a safetensors file")
    add("ckpt-missing-tensors", M, "weights of another architecture (tensor names differ)", lambda d: _load(
        _weights(d, _st_header({"other.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                               b"\0" * 8))), "missing tensors")

    # ---- fine-tuning and segmentation through the API
    F = "API finetune / Session"
    add("ft-float-scribbles", F, "scribbles 0.5, 1.5, 2.5 (non-integer floats)", lambda d: _finetune(
        d, scribbles=_scr_array([0.5, 1.5, 2.5])), "non-integer values")
    add("ft-nan-scribbles", F, "scribbles holding NaN", lambda d: _finetune(
        d, scribbles=_scr_array([1, np.nan])), "NaN or infinite")
    add("ft-negative-scribbles", F, "scribbles holding -1", lambda d: _finetune(
        d, scribbles=_scr_array([1, -1], np.int16)), "negative")
    add("ft-class-mismatch", F, "scribble value 5 for a 2-class model", lambda d: _finetune(
        d, scribbles=_scr_array([1, 5], np.uint8)), "model has 2 classes")
    add("ft-other-grid", F, "scribbles on another grid (8x20x19)", lambda d: _finetune(
        d, scribbles=np.ones((8, 20, 19), np.uint8)), "image grid")
    add("ft-empty-scribbles", F, "scribbles with no painted voxel", lambda d: _finetune(
        d, scribbles=np.zeros(SHAPE, np.uint8)), "no painted voxel")
    add("ft-2d-image", F, "a 2D image", lambda d: _finetune(d, image=np.zeros((20, 20), np.float32)),
        "expected an image|grid")
    add("ft-steps-negative", F, "steps = -5", lambda d: _finetune(d, steps=-5), "steps")
    add("ft-lr-nan", F, "learning rate NaN", lambda d: _finetune(d, lr=float("nan")), "lr|learning rate")
    add("ft-lr-negative", F, "learning rate -1", lambda d: _finetune(d, lr=-1.0), "lr|learning rate")
    add("ft-batch-zero", F, "batch size 0", lambda d: _finetune(d, batch_size=0), "batch")
    add("ft-seconds-negative", F, "seconds = -1", lambda d: _finetune(d, steps=None, seconds=-1.0), "seconds")
    add("ft-crop-zero", F, "crop shape (0, 0, 0)", lambda d: _finetune(d, crop_shape=(0, 0, 0)), "crop")
    add("ft-device", F, "device 'quantum'", lambda d: _finetune(d, device="quantum"), "device")
    add("ft-precision", F, "precision 'fp8'", lambda d: _finetune(d, precision="fp8"), "precision")
    add("session-float-scribbles", F, "a float scribble layer in the session", lambda d: _session(
        d, _scr_array([1.0, 2.0])), "must hold integers")
    add("session-class-mismatch", F, "scribble value 9 in a 2-class session", lambda d: _session(
        d, _scr_array([9], np.uint8)), "2 classes")

    S = "API segment_volume"
    add("seg-tile-zero", S, "tile shape (0, 0, 0)", lambda d: _segment(d, tile_shape=(0, 0, 0)), "tile")
    add("seg-overlap", S, "overlap 1.5", lambda d: _segment(d, overlap=1.5), "overlap")
    add("seg-batch-negative", S, "batch size -3", lambda d: _segment(d, batch_size=-3), "batch")
    add("seg-device", S, "device 'quantum'", lambda d: _segment(d, device="quantum"), "device")
    add("seg-cuda-absent", S, "device cuda:7 (no such GPU)", lambda d: _segment(d, device="cuda:7"),
        "cuda|CUDA|device")
    add("seg-precision", S, "precision 'fp8'", lambda d: _segment(d, precision="fp8"), "precision")
    add("seg-4d-wrong-channels", S, "a 3-channel image for a 1-channel model", lambda d: _segment(
        d, image=np.zeros((3, *SHAPE), np.float32)), "channel")

    # ---- the command line
    SURFACE_INFO = "cnnseg info"
    add("info-missing", SURFACE_INFO, "a missing file", lambda d: ["info", str(d / "none.nrrd")], "does not exist")
    add("info-corrupt", SURFACE_INFO, "a corrupt .nrrd", lambda d: (
        (d / "g.nrrd").write_bytes(os.urandom(512)), ["info", str(d / "g.nrrd")])[1], "corrupt")
    add("info-empty-folder", SURFACE_INFO, "an empty folder", lambda d: (
        (d / "e").mkdir(), ["info", str(d / "e")])[1], "empty")
    add("info-dicom-absurd", SURFACE_INFO, "a DICOM series folder claiming 65535 x 65535 pixels per slice",
        lambda d: ["info", str(_dicom_absurd(d))], "exhaust memory",
        env={"CNNSEG_MAX_VOLUME_BYTES": str(10**9)})
    add("info-2d", SURFACE_INFO, "a 2D TIFF", lambda d: ["info", str(_tiff(d, np.zeros((9, 9), np.uint8)))], "2D")
    add("info-zarr-absurd", SURFACE_INFO, "Zarr metadata claiming 10^18 voxels", lambda d: [
        "info", str(_zarr(d, (10**6,) * 3, (64,) * 3))], "limit")
    add("info-symlink-loop", SURFACE_INFO, "a symbolic link loop", lambda d: ["info", str(_loop(d, ".nrrd"))], "loop")
    add("info-nifti-absurd", SURFACE_INFO, "a NIfTI header claiming 30000^3 voxels", lambda d: [
        "info", str(_nifti_header(d, (30000, 30000, 30000)))], "limit")

    G = "cnnseg segment"
    seg = lambda d, *extra: ["segment", img(d), "-m", mdl(d), "-o", str(d / "out"), "-q", *extra]  # noqa: E731
    add("seg-cli-missing-model", G, "a model that does not exist", lambda d: [
        "segment", img(d), "-m", str(d / "nomodel.json"), "-o", str(d / "out")], "no model|not found")
    add("seg-cli-deep-json", G, "a model sidecar nested 100,000 levels deep", lambda d: [
        "segment", img(d), "-m", str(_sidecar(d, text="[" * 100000 + "]" * 100000)), "-o", str(d / "out"), "-q"],
        "levels deep")
    add("seg-cli-pickle", G, "a pickle model (.pth)", lambda d: (
        (d / "m.pth").write_bytes(b"\x80\x04."), ["segment", img(d), "-m", str(d / "m.pth"), "-o", str(d / "out")])[1],
        "pickle")
    add("seg-cli-2d", G, "a 2D input", lambda d: [
        "segment", str(_tiff(d, np.zeros((9, 9), np.uint8))), "-m", mdl(d), "-o", str(d / "out")], "2D")
    add("seg-cli-nan-header", G, "an input with NaN spacing", lambda d: [
        "segment", str(_nifti_header(d, (4, 4, 4), pixdim=(float("nan"), 1, 1), data=b"\0" * 128)),
        "-m", mdl(d), "-o", str(d / "out")], "non-finite")
    add("seg-cli-tile-negative", G, "--tile -1 8 8", lambda d: seg(d, "--tile", "-1", "8", "8"), "tile")
    add("seg-cli-tile-zero", G, "--tile 0 0 0", lambda d: seg(d, "--tile", "0", "0", "0"), "tile")
    add("seg-cli-overlap", G, "--overlap 2", lambda d: seg(d, "--overlap", "2"), "overlap")
    add("seg-cli-overlap-nan", G, "--overlap nan", lambda d: seg(d, "--overlap", "nan"), "overlap")
    add("seg-cli-batch-zero", G, "--batch 0", lambda d: seg(d, "--batch", "0"), "batch")
    add("seg-cli-batch-negative", G, "--batch -3", lambda d: seg(d, "--batch", "-3"), "batch")
    add("seg-cli-device", G, "--device quantum", lambda d: seg(d, "--device", "quantum"), "device")
    add("seg-cli-cuda-absent", G, "--device cuda:7 without that GPU", lambda d: seg(d, "--device", "cuda:7"),
        "cuda|CUDA")
    add("seg-cli-precision", G, "--precision fp8", lambda d: seg(d, "--precision", "fp8"), "precision|invalid choice")
    add("seg-cli-format", G, "--format png", lambda d: seg(d, "--format", "png"), "invalid choice")
    add("seg-cli-outdir-file", G, "an output folder that is a file", lambda d: [
        "segment", img(d), "-m", mdl(d), "-o", str(d / "gt.nii.gz"), "-q"], "file|folder|director")
    add("seg-cli-unwritable", G, "an output folder in /proc (unwritable)", lambda d: [
        "segment", img(d), "-m", mdl(d), "-o", "/proc/cnnseg_bad_out", "-q"], "cannot|writ|permission|denied")
    add("seg-cli-collide", G, "two inputs with the same file name (outputs would collide)", lambda d: (
        (d / "d1").mkdir(), (d / "d2").mkdir(), _write(d / "d1" / "a.nrrd", np.zeros(SHAPE, np.float32)),
        _write(d / "d2" / "a.nrrd", np.ones(SHAPE, np.float32)),
        ["segment", str(d / "d1" / "a.nrrd"), str(d / "d2" / "a.nrrd"), "-m", mdl(d), "-o", str(d / "out"), "-q"])[4],
        "same|collide")
    add("seg-cli-channel", G, "--channel 5 of a 1-channel image", lambda d: seg(d, "--channel", "5"), "channel")
    add("seg-cli-folder-no-volume", G, "a folder holding no volume", lambda d: (
        (d / "nothing").mkdir(), (d / "nothing" / "x.txt").write_text("x"),
        ["segment", str(d / "nothing"), "-m", mdl(d), "-o", str(d / "out"), "-q"])[2], "no |DICOM|volume")
    add("seg-cli-symlink-loop", G, "an input that is a symbolic link loop", lambda d: [
        "segment", str(_loop(d)), "-m", mdl(d), "-o", str(d / "out"), "-q"], "loop|does not exist|not found")
    add("seg-cli-huge-header", G, "an input whose NRRD header claims 10^15 voxels", lambda d: [
        "segment", str(_nrrd_header(d, "100000 100000 100000")), "-m", mdl(d), "-o", str(d / "out"), "-q"],
        "limit")

    add("seg-cli-zarr-beyond-disk", G, "a Zarr input claiming 4000^3 voxels (outputs larger than the disk)",
        lambda d: ["segment", str(_zarr(d, (4000,) * 3, (64,) * 3)), "-m", mdl(d), "-o", str(d / "out"), "-q",
                   "--format", "nii.gz", "--device", "cpu"], "GB free")

    T = "cnnseg finetune"
    ft = lambda d, s, *extra: ["finetune", img(d), "--scribbles", s, "-m", mdl(d), "-o", str(d / "tuned"),  # noqa: E731
                               "--steps", "1", "-q", *extra]
    add("ft-cli-float-scribbles", T, "scribbles 0.5, 1.5, 2.5 (the issue's case)", lambda d: ft(
        d, str(_scr(d, [0.5, 1.5, 2.5]))), "non-integer values")
    add("ft-cli-nan-scribbles", T, "scribbles holding NaN", lambda d: ft(d, str(_scr(d, [1, np.nan]))), "NaN")
    add("ft-cli-negative", T, "scribbles holding -1", lambda d: ft(d, str(_scr(d, [1, -1], np.int16))), "negative")
    add("ft-cli-class-mismatch", T, "scribble value 7 for a 2-class model", lambda d: ft(
        d, str(_scr(d, [1, 7], np.uint8))), "2 classes|0..2")
    add("ft-cli-empty", T, "scribbles with no painted voxel", lambda d: ft(
        d, str(_scr(d, [], np.uint8))), "no painted voxel")
    add("ft-cli-other-grid", T, "scribbles on another grid", lambda d: ft(
        d, str(_scr(d, [1, 2], np.uint8, shape=(8, 20, 19)))), "grid")
    add("ft-cli-other-spacing", T, "scribbles with another voxel spacing", lambda d: ft(
        d, str(_scr(d, [1, 2], np.uint8, spacing=(1.0, 1.0, 1.0)))), "grid")
    add("ft-cli-probability-map", T, "a 2-channel probability map as scribbles", lambda d: ft(
        d, str(_tiff(d, np.zeros((2, *SHAPE), np.float32), name="p.tif", metadata={"axes": "CZYX"}))), "channel")
    add("ft-cli-steps-zero", T, "--steps 0", lambda d: ft(d, scr(d))[:-3] + ["--steps", "0", "-q"], "steps")
    add("ft-cli-steps-negative", T, "--steps -5", lambda d: ft(d, scr(d))[:-3] + ["--steps", "-5", "-q"], "steps")
    add("ft-cli-seconds-negative", T, "--seconds -1", lambda d: ft(d, scr(d))[:-3] + ["--seconds", "-1", "-q"],
        "seconds")
    add("ft-cli-seconds-nan", T, "--seconds nan", lambda d: ft(d, scr(d))[:-3] + ["--seconds", "nan", "-q"],
        "seconds")
    add("ft-cli-lr-negative", T, "--lr -1", lambda d: ft(d, scr(d), "--lr", "-1"), "lr")
    add("ft-cli-lr-nan", T, "--lr nan", lambda d: ft(d, scr(d), "--lr", "nan"), "lr")
    add("ft-cli-batch-zero", T, "--batch 0", lambda d: ft(d, scr(d), "--batch", "0"), "batch")
    add("ft-cli-crop-zero", T, "--crop 0 0 0", lambda d: ft(d, scr(d), "--crop", "0", "0", "0"), "crop")
    add("ft-cli-device", T, "--device quantum", lambda d: ft(d, scr(d), "--device", "quantum"), "device")
    add("ft-cli-precision", T, "--precision fp16 (inference only)", lambda d: ft(d, scr(d), "--precision", "fp16"),
        "invalid choice|precision")
    add("ft-cli-nan-image", T, "an image holding NaN", lambda d: [
        "finetune", str(_write(d / "nan.nrrd", np.full(SHAPE, np.nan, np.float32))), "--scribbles", scr(d),
        "-m", mdl(d), "-o", str(d / "tuned"), "--steps", "1", "-q"], "NaN|finite")
    add("ft-cli-output-parent-file", T, "an output under a file (-o gt.nii.gz/new)", lambda d: [
        "finetune", img(d), "--scribbles", scr(d), "-m", mdl(d), "-o", str(d / "gt.nii.gz" / "new"),
        "--steps", "1", "-q"], "cannot write|not a folder|file")
    add("ft-cli-class-names", T, "--class-names with 3 names for a 2-class model", lambda d: ft(
        d, scr(d), "--class-names", "a", "b", "c"), "3 name")
    add("ft-cli-huge-checkpoint", T, "a start checkpoint asking for 10^15 parameters", lambda d: [
        "finetune", img(d), "--scribbles", scr(d), "-m", str(_sidecar(
            d, lambda doc: {**doc, "config": {**doc["config"], "base_width": 10**6}})),
        "-o", str(d / "tuned"), "--steps", "1", "-q"], "parameters")

    E = "cnnseg evaluate"
    add("ev-other-grid", E, "a prediction on another grid", lambda d: [
        "evaluate", str(_write(d / "p.nii.gz", np.zeros((8, 20, 19), np.uint8))), str(d / "gt.nii.gz")],
        "different grids")
    add("ev-probability-map", E, "a probability map as the prediction", lambda d: [
        "evaluate", str(_tiff(d, np.zeros((2, *SHAPE), np.float32), name="p.tif", metadata={"axes": "CZYX"})),
        str(d / "gt.nii.gz")], "channels")
    add("ev-non-integer", E, "a prediction of 0.5, 1.5, 2.5", lambda d: [
        "evaluate", str(_scr(d, [0.5, 1.5, 2.5], name="p.nrrd")), str(d / "gt.nii.gz")], "integer|label")
    add("ev-missing", E, "a missing ground truth", lambda d: [
        "evaluate", str(d / "gt.nii.gz"), str(d / "nope.nii.gz")], "does not exist")
    add("ev-classes-small", E, "--classes 1 for labels up to 1", lambda d: [
        "evaluate", str(d / "gt.nii.gz"), str(d / "gt.nii.gz"), "--classes", "1"], "too small")
    add("ev-classes-negative", E, "--classes -4", lambda d: [
        "evaluate", str(d / "gt.nii.gz"), str(d / "gt.nii.gz"), "--classes", "-4"], "too small|classes")

    SURFACE_OTHER = "cnnseg models / slicer-install"
    add("models-extra-arg", SURFACE_OTHER, "cnnseg models with a stray argument", lambda d: ["models", "extra"],
        "unrecognized arguments")
    add("slicer-install-onto-file", SURFACE_OTHER, "slicer-install into a path that is a file", lambda d: [
        "slicer-install", str(d / "gt.nii.gz")], "file|folder|director|exists")
    add("no-subcommand", SURFACE_OTHER, "an unknown subcommand", lambda d: ["segmentt"], "invalid choice")

    L = "Slicer module"
    sl = lambda d, *extra: ["--model_file", mdl(d), "--device", "cpu", *extra, img(d), str(d / "lab.nrrd")]  # noqa: E731
    add("slicer-missing-input", L, "a missing input volume", lambda d: [
        "--model_file", mdl(d), str(d / "none.nrrd"), str(d / "lab.nrrd")], "not found")
    add("slicer-deep-json", L, "a model file nested 100,000 levels deep", lambda d: [
        "--model_file", str(_sidecar(d, text="[" * 100000 + "]" * 100000)), img(d), str(d / "lab.nrrd")],
        "levels deep")
    add("slicer-float-scribbles", L, "scribbles 0.5, 1.5, 2.5", lambda d: sl(
        d, "--scribbles", str(_scr(d, [0.5, 1.5, 2.5]))), "non-integer values")
    add("slicer-scribble-range", L, "scribble value 7 for a 2-class model", lambda d: sl(
        d, "--scribbles", str(_scr(d, [1, 7], np.uint8))), "2 classes")
    add("slicer-empty-scribbles", L, "an empty scribble label map", lambda d: sl(
        d, "--scribbles", str(_scr(d, [], np.uint8))), "no painted voxel")
    add("slicer-prob-class", L, "probability class 5 of a 2-class model", lambda d: sl(
        d, "--probability", str(d / "p.nrrd"), "--probability_class", "5"), "does not exist")
    add("slicer-overlap", L, "overlap 3 (outside 0..0.9)", lambda d: sl(d, "--overlap", "3"), "between")
    add("slicer-batch", L, "batch size 999 (outside 0..64)", lambda d: sl(d, "--batch_size", "999"), "between")
    add("slicer-finetune-seconds", L, "fine-tuning seconds 0", lambda d: sl(
        d, "--scribbles", scr(d), "--finetune_seconds", "0"), "between")
    add("slicer-fp16-cpu", L, "fp16 on a CPU", lambda d: [
        "--model_file", mdl(d), "--device", "cpu", "--precision", "fp16", img(d), str(d / "lab.nrrd")],
        "fp16|precision")
    add("slicer-2d", L, "a 2D input", lambda d: [
        "--model_file", mdl(d), str(_tiff(d, np.zeros((9, 9), np.uint8))), str(d / "lab.nrrd")], "2D")
    add("slicer-out-unwritable", L, "an output label map under a file", lambda d: [
        "--model_file", mdl(d), "--device", "cpu", img(d), str(d / "gt.nii.gz" / "lab.nrrd")],
        "is a file|cannot write")
    return c


CASES = _cases()


# ---------------------------------------------------------------- running one case
def snapshot(d: Path) -> dict[str, str]:
    """sha256 of every file below ``d`` (symlinks by their target text)."""
    out = {}
    for root, dirs, files in os.walk(d):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            p = Path(root) / name
            rel = str(p.relative_to(d))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class Outcome:
    kind: str  # "api" | "cli"
    message: str
    code: int | None = None
    stderr: str = ""
    error_type: str = ""


@contextlib.contextmanager
def _env(values: dict[str, str] | None):
    old = {k: os.environ.get(k) for k in (values or {})}
    os.environ.update(values or {})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_case(case: Case, d: Path) -> Outcome:
    """Run ``case`` in folder ``d`` (which holds the kit); returns what the user saw."""
    from napari_cnnseg.core.errors import CnnsegError

    with _env(case.env):
        target = case.build(d)
        if callable(target):
            try:
                target()
            except CnnsegError as exc:
                return Outcome("api", str(exc), error_type=type(exc).__name__)
            except Exception as exc:  # noqa: BLE001 - not a user-facing error: a bug
                return Outcome("api", f"(bug) {type(exc).__name__}: {exc}", error_type="!" + type(exc).__name__)
            return Outcome("api", "", error_type="")  # accepted: the test fails
        if case.surface == "Slicer module":
            from napari_cnnseg.cli.slicer import main as entry
        else:
            from napari_cnnseg.cli import main as entry
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                code = entry([str(a) for a in target])
            except SystemExit as exc:  # argparse
                code = exc.code if isinstance(exc.code, int) else 2
        text = err.getvalue()
        lines = [ln for ln in text.splitlines() if "error:" in ln]
        return Outcome("cli", lines[-1] if lines else text.strip()[-300:], code, text)


def markdown_table(rows: list[tuple[Case, Outcome]]) -> str:
    """The docs/reliability.md table."""
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| # | surface | bad input | what the user sees |", "|---|---|---|---|"]
    for i, (case, res) in enumerate(rows, 1):
        msg = res.message
        if len(msg) > 260:
            msg = msg[:257] + "..."
        out.append(f"| {i} | {cell(case.surface)} | {cell(case.what)} (`{case.id}`) | {cell(msg)} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:  # pragma: no cover - documentation helper
    """``python tests/test_bad_inputs_cases.py --table [OUT.md | docs/reliability.md]``: run every
    case and print the table, write it to OUT.md, or replace it in docs/reliability.md."""
    import logging
    import re
    import tempfile

    logging.disable(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kit = Path(tmp) / "kit"
        make_kit(kit)
        for case in CASES:
            d = Path(tmp) / case.id
            import shutil

            shutil.copytree(kit, d, symlinks=True)
            res = run_case(case, d)
            res.message = re.sub(re.escape(str(d)), "…", res.message)
            rows.append((case, res))
    table = markdown_table(rows)
    if len(argv) > 1 and argv[1].endswith("reliability.md"):  # rewrite the table in the docs
        doc = Path(argv[1]).read_text(encoding="utf-8")
        begin, end = "<!-- cases:begin -->", "<!-- cases:end -->"
        head, rest = doc.split(begin, 1)
        Path(argv[1]).write_text(head + begin + "\n" + table + "\n" + end + rest.split(end, 1)[1])
    elif len(argv) > 1:
        Path(argv[1]).write_text(table + "\n")
    else:
        print(table)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
