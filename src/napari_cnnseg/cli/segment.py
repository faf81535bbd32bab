"""``cnnseg segment INPUT... -m MODEL -o OUTDIR``: label maps (and probabilities) for a cohort.

Example::

    $ cnnseg segment head1.nii.gz head2.nrrd -m brain_t1 -o out/ --probabilities
    head1.nii.gz [##########################----] 14/16 tiles
    out/head1_labels.nii.gz
    out/head1_probabilities.nii.gz
    ...

Outputs land on the source geometry (spacing, origin, direction), in the input's format unless
``--format`` says otherwise (DICOM inputs default to ``.nii.gz``). A progress bar runs on stderr;
the written paths are printed on stdout. A bad input is reported and skipped; the exit code is
then 2 (1 volume failed or more), 0 when every input was segmented.

Larger than memory: a Zarr / OME-Zarr input is read tile by tile and its probabilities are
written tile by tile into a Zarr store in OUTDIR (``<stem>_probabilities.zarr`` with
``--probabilities --format zarr``, else a hidden scratch store removed afterwards); with a Zarr
output format the labels and uncertainty are written slab by slab too. Peak memory is then
bounded by the tiles (plus 1 byte per voxel for labels written to a non-Zarr format).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

_KNOWN_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz", ".nii", ".nrrd", ".nhdr",
                   ".mha", ".mhd", ".tiff", ".tif", ".zarr", ".dcm")
#: probabilities written to a non-Zarr format from a streamed input warn from this size on
_WARN_IN_MEMORY_BYTES = 1 << 30
_WRITE_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "tif", "tiff", "ome.tif", "zarr", "ome.zarr")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg segment``."""
    p = sub.add_parser(
        "segment",
        help="segment volumes with a model: label maps (+ probabilities) on the source geometry",
        description=(
            "Segment one or more volumes (NIfTI, NRRD, MetaImage, TIFF, Zarr, DICOM folder) with a "
            "checkpoint or a shipped model. Writes OUTDIR/<stem>_labels.<ext> (class indices, "
            "uint8) and, on request, <stem>_probabilities.<ext> (K channels, float32) and "
            "<stem>_uncertainty.<ext> (normalised entropy in [0, 1])."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="volume files or DICOM folders")
    p.add_argument("-m", "--model", required=True,
                   help="checkpoint path (<name>.safetensors/.json) or shipped model name "
                        "(see `cnnseg models`)")
    p.add_argument("-o", "--outdir", required=True, help="output folder (created if missing)")
    p.add_argument("--probabilities", action="store_true", help="also write per-class probabilities")
    p.add_argument("--uncertainty", action="store_true",
                   help="also write the normalised entropy map (0 certain .. 1 uniform)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision (auto: reduced precision only where it is native and "
                        "agrees with fp32 on a probe tile)")
    p.add_argument("--tile", nargs=3, type=int, metavar=("Z", "Y", "X"),
                   help="tile input shape (default 96 96 96, rounded to what the model accepts)")
    p.add_argument("--overlap", type=float, default=None,
                   help="overlap of blended tiles for same-padding models, in [0, 1) (default 0.25)")
    p.add_argument("--batch", type=int, default=None, help="tiles per forward pass (default auto)")
    p.add_argument("--channel", type=int, default=None,
                   help="channel to use from multi-channel inputs (default: all channels when the "
                        "model takes several, else required for multi-channel files)")
    p.add_argument("--format", default=None, choices=_WRITE_FORMATS,
                   help="output format (default: the input's; DICOM inputs give nii.gz)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def output_stem(path: Path) -> tuple[str, str]:
    """(stem, extension with leading dot) of an input path; DICOM gives ``.nii.gz``."""
    name = path.name.rstrip("/")
    for suffix in _KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            stem = name[: -len(suffix)]
            return stem, ".nii.gz" if suffix == ".dcm" else name[-len(suffix):]
    return name, ".nii.gz"  # DICOM folder or unknown ending


class ProgressBar:
    """``progress(done, total)`` drawing a bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str, stream=None, width: int = 30) -> None:
        self.label, self.width = label, width
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_quarter = -1

    def __call__(self, done: int, total: int) -> None:
        total = max(total, 1)
        frac = min(1.0, done / total)
        quarter = int(frac * 4)
        if not self.tty and quarter == self._last_quarter and done < total:
            return  # logs/pipes: at most 5 lines per volume
        self._last_quarter = quarter
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{total} tiles {time.perf_counter() - self.start:.1f}s"
        end = "\n" if (not self.tty or done >= total) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _read(path: Path, channel: int | None, in_channels: int):
    from ..core.errors import InputError
    from ..core.io import read_volume

    if channel is not None:
        return read_volume(path, channel=channel, lazy=True)
    try:
        return read_volume(path, all_channels=in_channels > 1, lazy=True)
    except InputError as exc:
        if "channel" not in str(exc):  # a 2D image, an unsupported axis, ...: no --channel hint
            raise
        raise InputError(f"{exc} (pass --channel N)") from None


def check_image_values(array, name: str, *, allow_nonfinite: bool = True) -> None:
    """Catch two likely mistakes in an in-memory image before any work is done.

    A label map given as the image (integers spanning at most 16 values) is a warning; NaN/inf
    voxels are a warning when ``allow_nonfinite`` (inference reads them as 0 after
    normalisation), else an :class:`~napari_cnnseg.core.errors.InputError`, as is an image
    without any finite voxel. Lazy (Zarr) arrays are not scanned.
    """
    import numpy as np

    from ..core.errors import InputError

    if not isinstance(array, np.ndarray) or array.size == 0:
        return
    if array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if hi - lo <= 15:
            log.warning("%s looks like a label map, not an image (integer values %d..%d only); "
                        "give the scan itself", name, lo, hi)
        return
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad == array.size:
        raise InputError(f"{name} holds no finite value (all voxels are NaN/inf); check the file")
    if bad and not allow_nonfinite:
        raise InputError(f"{name} has {bad} NaN/inf voxel(s) of {array.size}; replace them "
                         "(e.g. with 0 or the background intensity) first")
    if bad:
        log.warning("%s has %d NaN/inf voxel(s) of %d (%.2g%%); they are read as 0 after "
                    "normalisation, so their labels are not meaningful",
                    name, bad, array.size, 100.0 * bad / array.size)


def _streams(volume, ext: str) -> bool:
    """Stream through zarr when the input is lazy / Zarr or the output format is Zarr."""
    import numpy as np

    from ..core.io import ZARR_SUFFIXES

    return (not isinstance(volume.array, np.ndarray) or volume.metadata.get("format") == "zarr"
            or ext.lower() in ZARR_SUFFIXES)


def segment_file(path: Path, model, args: argparse.Namespace) -> list[Path]:
    """Segment one input; returns the written paths."""
    from ..core.errors import InputError
    from ..core.io import write_volume
    from ..core.pipeline import segment_volume

    in_channels = int(getattr(model, "in_channels", 1))
    volume = _read(path, args.channel, in_channels)
    if volume.num_channels != in_channels:
        raise InputError(
            f"{path.name} has {volume.num_channels} channel(s) but the model takes {in_channels}"
            + ("; pass --channel N" if volume.num_channels > 1 else "")
        )
    check_image_values(volume.array, path.name)
    stem, ext = output_stem(path)
    if args.format:
        ext = "." + args.format
    progress = None if args.quiet else ProgressBar(path.name)
    predict_kwargs = dict(
        tile_shape=tuple(args.tile) if args.tile else None, overlap=args.overlap,
        batch_size=args.batch, device=args.device, precision=args.precision, progress=progress,
    )
    outdir = Path(args.outdir)
    if _streams(volume, ext):
        return _segment_streaming(volume, model, outdir, stem, ext, args, predict_kwargs)
    result = segment_volume(
        volume, model, probabilities=args.probabilities, uncertainty=args.uncertainty, **predict_kwargs
    )
    written = [write_volume(outdir / f"{stem}_labels{ext}", result.labels)]
    if result.probabilities is not None:
        written.append(write_volume(outdir / f"{stem}_probabilities{ext}", result.probabilities))
    if result.uncertainty is not None:
        written.append(write_volume(outdir / f"{stem}_uncertainty{ext}", result.uncertainty))
    return written


def _segment_streaming(volume, model, outdir: Path, stem: str, ext: str, args: argparse.Namespace,
                       predict_kwargs: dict) -> list[Path]:
    """Larger than memory: probabilities go tile by tile into a Zarr store in ``outdir``.

    The store is the user's ``<stem>_probabilities.zarr`` when asked for with a Zarr output
    format, else a hidden scratch store removed afterwards. With a Zarr output format the
    labels (+ uncertainty) are written slab by slab into Zarr stores too; other formats get
    them from memory (1 byte per voxel for the labels). Every store is committed atomically
    once complete and removed on any error.
    """
    import numpy as np

    from ..core.inference import network_spec
    from ..core.io import ZARR_SUFFIXES, ZarrVolumeWriter, write_volume
    from ..core.pipeline import class_names_for, labels_dtype, segment_volume

    k = network_spec(model).num_classes
    names = class_names_for(model, k)
    grid = tuple(volume.spatial_shape)
    zarr_out = ext.lower() in ZARR_SUFFIXES
    with contextlib.ExitStack() as stack:
        def store(kind: str, shape: tuple[int, ...], dtype) -> ZarrVolumeWriter:
            name = f"{stem}_{kind}{ext if zarr_out else '.zarr'}"
            return stack.enter_context(ZarrVolumeWriter(outdir / name, like=volume, shape=shape,
                                                        dtype=dtype, class_names=names))

        probs = store("probabilities", (k, *grid), np.float32)
        labels = store("labels", grid, labels_dtype(k)) if zarr_out else None
        unc = store("uncertainty", grid, np.float32) if zarr_out and args.uncertainty else None
        where = "Zarr outputs" if zarr_out else f"a scratch Zarr store in {outdir}"
        log.info("%s: streaming tile by tile into %s", stem, where)
        result = segment_volume(
            volume, model, probabilities=args.probabilities, uncertainty=args.uncertainty,
            probabilities_out=probs.array, labels_out=labels.array if labels else None,
            uncertainty_out=unc.array if unc else None, **predict_kwargs,
        )
        if zarr_out:
            written = [labels.commit()]
            if args.probabilities:
                written.append(probs.commit())
            if unc is not None:
                written.append(unc.commit())
            return written
        written = [write_volume(outdir / f"{stem}_labels{ext}", result.labels)]
        if result.probabilities is not None:
            size = k * 4 * float(np.prod(grid))
            if size >= _WARN_IN_MEMORY_BYTES:
                log.warning("writing %s probabilities as %s loads all %d channels into memory "
                            "(%.1f GB); use --format zarr to stream them", stem, ext, k, size / 1e9)
            written.append(write_volume(outdir / f"{stem}_probabilities{ext}",
                                        result.probabilities.with_array(probs.array[...])))
        if result.uncertainty is not None:
            written.append(write_volume(outdir / f"{stem}_uncertainty{ext}", result.uncertainty))
        return written


def run(args: argparse.Namespace) -> int:
    """Segment every input; returns 0 when all succeeded, 2 when some failed."""
    from ..core.devices import resolve_device
    from ..core.errors import Cancelled, CnnsegError, InputError
    from ..core.models import resolve_model

    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch is not None and args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    if args.tile is not None and min(args.tile) < 1:
        raise InputError(f"--tile must be 3 positive integers (Z Y X), got {args.tile}")
    outdir = Path(args.outdir)
    _check_distinct_outputs(args.inputs, args.format, outdir)
    resolve_device(args.device)  # fail early on a bad device
    model = resolve_model(args.model)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"output folder {outdir} exists and is not a folder; choose another -o")
    created = not outdir.exists()
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {outdir} ({exc.strerror or exc}); "
                         "choose a writable -o") from None
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise InputError(f"output folder {outdir} is not writable; choose a writable -o")
    failed = 0
    for name in args.inputs:
        path = Path(name)
        try:
            for out in segment_file(path, model, args):
                print(out, flush=True)
        except Cancelled:
            raise
        except CnnsegError as exc:
            failed += 1
            where = "" if path.name in str(exc) else f"{path}: "  # the name once, not twice
            print(f"cnnseg segment: error: {where}{exc}", file=sys.stderr, flush=True)
    if failed and len(args.inputs) > 1:
        print(f"cnnseg segment: {failed} of {len(args.inputs)} input(s) failed", file=sys.stderr)
    if created and failed == len(args.inputs):
        with contextlib.suppress(OSError):
            outdir.rmdir()  # nothing was written: leave no empty folder behind (only if empty)
    return 2 if failed else 0


def _check_distinct_outputs(inputs: list[str], fmt: str | None, outdir: Path) -> None:
    """Refuse a cohort where two inputs would write the same files (the second would
    silently replace the first's), e.g. ``d1/a.nii.gz d2/a.nii.gz``."""
    from ..core.errors import InputError

    seen: dict[tuple[str, str], str] = {}
    for name in inputs:
        stem, ext = output_stem(Path(name))
        key = (stem, "." + fmt if fmt else ext.lower())
        if key in seen:
            raise InputError(
                f"inputs {seen[key]} and {name} would both write "
                f"{outdir / (stem + '_labels' + key[1])}; give each input once, and segment "
                "same-named files into separate -o folders"
            )
        seen[key] = name
