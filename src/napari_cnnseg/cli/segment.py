"""``cnnseg segment INPUT... -m MODEL -o OUTDIR``: label maps (and probabilities) for a cohort.

INPUT: files, globs, folders (their volume files), or ``.txt`` / ``.csv`` lists of paths.
Volumes run one after another here, or one task per volume on a dask cluster
(``--workers N`` for a LocalCluster here, ``--scheduler ADDRESS`` for a running one;
docs/cohorts.md). Finished volumes are skipped on a re-run (``--overwrite`` redoes them); a
summary goes to ``OUTDIR/summary.csv`` (and stdout with ``--json``).

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
import os  # noqa: F401 - tests patch os.access through this module
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

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
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="volume files, DICOM folders, globs ('scans/*.nii.gz'), folders of volumes, "
                        "or .txt/.csv lists of paths")
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
    grp = p.add_argument_group("cohorts and clusters (dask.distributed, docs/cohorts.md)")
    where = grp.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, default=None, metavar="N",
                       help="run one task per volume on a LocalCluster of N worker processes "
                            "here (threads per worker: cores / N)")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="run on a running dask cluster (e.g. tcp://host:8786)")
    grp.add_argument("--overwrite", action="store_true",
                     help="redo volumes whose outputs are complete from an earlier run")
    grp.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout instead of the written paths")
    grp.add_argument("--blocks", nargs="*", type=int, metavar="N", default=None,
                     help="cut each Zarr input into blocks (default 128 128 128, or Z Y X) run on "
                          "the workers, written into Zarr outputs: volumes larger than a machine")
    return p


def output_stem(path: Path) -> tuple[str, str]:
    """(stem, extension with leading dot) of an input path; DICOM gives ``.nii.gz``."""
    from ..core.cohort import output_stem as stem_of

    return stem_of(path)


def check_image_values(array, name: str, *, allow_nonfinite: bool = True) -> None:
    """See :func:`napari_cnnseg.core.cohort_io.check_image_values`."""
    from ..core.cohort_io import check_image_values as check

    check(array, name, allow_nonfinite=allow_nonfinite)


class ProgressBar:
    """``progress(done, total)`` drawing a bar on stderr (redrawn in place on a terminal)."""

    def __init__(self, label: str, stream=None, width: int = 30, unit: str = "tiles") -> None:
        self.label, self.width, self.unit = label, width, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()
        self._last_quarter = -1

    def __call__(self, done: int, total: int) -> None:
        total = max(total, 1)
        frac = min(1.0, done / total)
        quarter = int(frac * 4)
        if not self.tty and quarter == self._last_quarter and done < total and self.unit == "tiles":
            return  # logs/pipes: at most 5 lines per volume (a cohort bar: one per volume)
        self._last_quarter = quarter
        filled = int(round(frac * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"{self.label} [{bar}] {done}/{total} {self.unit} {time.perf_counter() - self.start:.1f}s"
        end = "\n" if (not self.tty or done >= total) else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _options(args: argparse.Namespace):
    """Check the options; the :class:`~napari_cnnseg.core.cohort.CohortOptions` they ask for."""
    from ..core.cohort import CohortOptions
    from ..core.errors import InputError

    if args.overlap is not None and not 0.0 <= args.overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch is not None and args.batch < 1:
        raise InputError(f"--batch must be >= 1, got {args.batch}")
    if args.tile is not None and min(args.tile) < 1:
        raise InputError(f"--tile must be 3 positive integers (Z Y X), got {args.tile}")
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if args.blocks is not None and len(args.blocks) not in (0, 1, 3):
        raise InputError(f"--blocks takes nothing, N or Z Y X, got {args.blocks}")
    return CohortOptions(
        probabilities=args.probabilities, uncertainty=args.uncertainty, format=args.format,
        channel=args.channel, tile_shape=tuple(args.tile) if args.tile else None,
        overlap=args.overlap, batch_size=args.batch, device=args.device,
        precision=args.precision, overwrite=args.overwrite)


class _Reporter:
    """Prints each volume's outputs (or its one-line error) as it finishes, and a cohort bar."""

    def __init__(self, args: argparse.Namespace, total_bar: bool) -> None:
        self.args = args
        self.bar = ProgressBar("cohort", unit="volumes") if total_bar and not args.quiet else None

    def record(self, rec: dict) -> None:
        if rec["status"] == "failed":
            name = Path(rec["input"]).name
            where = "" if name in rec["error"] else f"{rec['input']}: "
            print(f"cnnseg segment: error: {where}{rec['error']}", file=sys.stderr, flush=True)
        elif not self.args.json:
            for out in rec.get("outputs", []):
                print(out, flush=True)

    def progress(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar(done, total)


def run(args: argparse.Namespace) -> int:
    """Segment every input; returns 0 when all succeeded, 2 when some failed."""
    from ..core.cohort import (
        CohortEngine,
        check_distinct_outputs,
        expand_inputs,
        prepare_outdir,
        segment_cohort,
        summary_json,
    )
    from ..core.devices import resolve_device
    from ..core.models import resolve_model

    options = _options(args)
    paths = expand_inputs(args.inputs)
    check_distinct_outputs(paths, args.format, Path(args.outdir))
    resolve_device(args.device)  # fail early on a bad device
    model = resolve_model(args.model)
    outdir, created = prepare_outdir(args.outdir)
    on_dask = bool(args.workers or args.scheduler)
    blocks = None if args.blocks is None else tuple(args.blocks * 3 if len(args.blocks) == 1 else args.blocks)
    rep = _Reporter(args, total_bar=on_dask and blocks is None)

    def bars(name: str) -> ProgressBar | None:  # per volume: its tiles (here) or blocks
        if args.quiet or (on_dask and blocks is None):
            return None
        return ProgressBar(name, unit="tiles" if blocks is None else "blocks")

    engine = CohortEngine(workers=args.workers, scheduler=args.scheduler, block_shape=blocks)
    result = segment_cohort(paths, model, outdir, options, engine=engine, progress=rep.progress,
                            volume_progress=bars, on_record=rep.record)
    failed = len(result.failed)
    removed = created and failed == len(paths)
    if removed:  # nothing was written: the folder this run created goes, summary included
        _remove_empty(outdir)
        log.info(
            "nothing was written: removed %s (this run created it), summary not kept", outdir)
    if args.json:
        print(_json_without_summary(summary_json(result)) if removed else summary_json(result),
              flush=True)
    if failed and len(paths) > 1:
        print(f"cnnseg segment: {failed} of {len(paths)} input(s) failed", file=sys.stderr)
    return 2 if failed else 0


def _json_without_summary(text: str) -> str:
    """``--json`` output whose summary file was removed with its folder: ``"summary": null``."""
    import json

    doc = json.loads(text)
    doc["summary"] = None
    return json.dumps(doc, indent=1)


def _remove_empty(outdir: Path) -> None:
    """Nothing was written: leave no folder behind (only our summary and records in it)."""
    import shutil

    with contextlib.suppress(OSError):
        (outdir / "summary.csv").unlink(missing_ok=True)
        shutil.rmtree(outdir / ".cnnseg", ignore_errors=True)
        outdir.rmdir()
