"""Cohorts: one model over many volumes, one after another here or on a dask cluster.

:func:`segment_cohort` takes files, globs, folders and text/CSV lists (:func:`expand_inputs`),
segments each volume with :func:`segment_one` (the engine of
:func:`~napari_cnnseg.core.pipeline.segment_volume`; Zarr inputs / outputs streamed tile by
tile) and returns one record per volume, also written to ``OUTDIR/summary.csv``:

* ``input``, ``status`` (``done``, ``skipped`` = complete from an earlier run, ``failed``),
  ``error`` (one line), ``shape`` (Z, Y, X), ``seconds``, ``voxels_per_s``,
  ``volume_ml`` (per class name, millilitres; from the voxel count x spacing, in the file's
  unit, mm unless the file says otherwise), ``outputs`` (written paths).

Every output file is written atomically; the record ``OUTDIR/.cnnseg/<stem>.json`` is written
last, so a volume is complete exactly when its record is there, names the same model
(weights fingerprint) and options, and its outputs exist. A re-run skips complete volumes
(``overwrite=True`` redoes them). With ``CohortEngine(workers=N | scheduler=ADDRESS | client=)``
the volumes run as one dask task each (:mod:`~napari_cnnseg.core.distributed`).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import Cancelled, CnnsegError, InputError
from .jobs import CancelFn, ProgressFn, check_cancel, report

log = logging.getLogger(__name__)

KNOWN_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz", ".nii", ".nrrd", ".nhdr",
                  ".mha", ".mhd", ".tiff", ".tif", ".zarr", ".dcm")
#: probabilities written to a non-Zarr format from a streamed input warn from this size on
WARN_IN_MEMORY_BYTES = 1 << 30
#: cubic millimetres ... per millilitre, by length unit of the spacing
_ML_PER_CUBIC_UNIT = {"mm": 1e-3, "cm": 1.0, "m": 1e6, "µm": 1e-12, "nm": 1e-21}
SUMMARY_NAME = "summary.csv"
#: a record written with another version of this layout is not trusted for skipping
RECORD_VERSION = 1


@dataclass(frozen=True)
class CohortOptions:
    """What is written per volume and how the engine runs (see ``cnnseg segment``).

    Attributes:
        probabilities / uncertainty: also write ``<stem>_probabilities`` (K, Z, Y, X) float32
            and ``<stem>_uncertainty`` (Z, Y, X) float32 in [0, 1].
        format: output ending without the dot (``nii.gz``, ``zarr``, ...); None = the input's
            (DICOM gives ``nii.gz``).
        channel: channel of multi-channel inputs; None = all when the model takes several.
        tile_shape, overlap, batch_size, device, precision: passed to
            :func:`~napari_cnnseg.core.inference.predict`.
        overwrite: redo volumes whose outputs are complete.
    """

    probabilities: bool = False
    uncertainty: bool = False
    format: str | None = None
    channel: int | None = None
    tile_shape: tuple[int, int, int] | None = None
    overlap: float | None = None
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    overwrite: bool = False

    def predict_kwargs(self) -> dict[str, Any]:
        return dict(tile_shape=self.tile_shape, overlap=self.overlap, batch_size=self.batch_size,
                    device=self.device, precision=self.precision)

    def output_key(self) -> dict[str, Any]:
        """The options that change the outputs (a record must match them to be skipped)."""
        return {k: v for k, v in asdict(self).items() if k not in ("overwrite", "device", "batch_size")}


@dataclass(frozen=True)
class CohortEngine:
    """Where a cohort runs (default: here, one volume after another): on a new ``LocalCluster``
    of ``workers`` processes (threads per worker so that workers x threads = cores), on a
    running ``scheduler`` (``tcp://host:8786``) or an existing ``client`` (wins over both);
    ``block_shape``: block mode (:mod:`~.blocks`), each (Zarr) volume in turn cut into blocks
    of (Z, Y, X) voxels run in parallel into Zarr outputs (``()`` = the default 128^3)."""

    workers: int | None = None
    scheduler: str | None = None
    client: Any = None
    block_shape: Sequence[int] | None = None

    @property
    def on_dask(self) -> bool:
        """True when the volumes (or blocks) run on dask workers."""
        return self.client is not None or bool(self.workers) or bool(self.scheduler)


@dataclass
class CohortResult:
    """Records of a cohort run, in input order, and where the summary went."""

    records: list[dict[str, Any]] = field(default_factory=list)
    summary_path: Path | None = None

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] == "failed"]


# -- inputs ---------------------------------------------------------------------------------

def output_stem(path: Path) -> tuple[str, str]:
    """(stem, extension with leading dot) of an input path; DICOM gives ``.nii.gz``."""
    name = Path(path).name.rstrip("/")
    for suffix in KNOWN_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)], ".nii.gz" if suffix == ".dcm" else name[-len(suffix):]
    return name, ".nii.gz"  # DICOM folder or unknown ending


def _is_volume_name(name: str) -> bool:
    low = name.lower()
    return not low.startswith(".") and any(low.endswith(s) for s in KNOWN_SUFFIXES if s != ".dcm")


def _read_list(path: Path) -> list[Path]:
    """Paths of a text list (one per line, ``#`` comments) or a CSV (column ``path``, ``image``
    or ``input``, else the first); relative paths are relative to the list file."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        col = next((header.index(k) for k in ("path", "image", "input") if k in header), None)
        body = rows[1:] if col is not None else rows
        names = [r[col or 0].strip() for r in body if r and r[col or 0].strip()]
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, names)]


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Volume paths from files, globs, folders and ``.txt`` / ``.csv`` lists, in order.

    A folder holding volume files gives those (sorted, not recursive); a folder without any
    (a DICOM series) is one input; a Zarr store is one input.

    Raises:
        InputError: a glob that matches nothing or an empty list / folder.
    """
    from .io._zarr import _is_zarr

    out: list[Path] = []
    for item in items:
        p = Path(item).expanduser()
        if any(c in str(item) for c in "*?[") and not p.exists():
            found = [Path(m) for m in sorted(glob.glob(str(p)))]
            if not found:
                raise InputError(f"{item} matches no file; check the pattern (quote it in the shell)")
            out.extend(found)
        elif p.is_file() and p.suffix.lower() in (".txt", ".csv", ".lst"):
            listed = _read_list(p)
            if not listed:
                raise InputError(f"{p} lists no input; write one volume path per line")
            out.extend(listed)
        elif p.is_dir() and not output_stem(p)[1].endswith("zarr") and not _is_zarr(p):
            found = sorted(q for q in p.iterdir() if _is_volume_name(q.name))
            out.extend(found or [p])  # no volume files inside: a DICOM series folder
        else:
            out.append(p)
    return out  # a path given twice is refused by check_distinct_outputs, not dropped


def check_distinct_outputs(inputs: Sequence[Path], fmt: str | None, outdir: Path) -> None:
    """Refuse a cohort where two inputs would write the same files, e.g. ``d1/a.nii.gz
    d2/a.nii.gz`` (the second would silently replace the first's)."""
    seen: dict[tuple[str, str], Path] = {}
    for path in inputs:
        stem, ext = output_stem(Path(path))
        key = (stem, "." + fmt if fmt else ext.lower())
        if key in seen:
            raise InputError(
                f"inputs {seen[key]} and {path} would both write "
                f"{outdir / (stem + '_labels' + key[1])}; give each input once, and segment "
                "same-named files into separate -o folders")
        seen[key] = Path(path)


def prepare_outdir(outdir: str | os.PathLike) -> tuple[Path, bool]:
    """Create ``outdir`` if needed; returns (path, created). Raises InputError if unusable."""
    out = Path(outdir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"output folder {out} exists and is not a folder; choose another -o")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {out} ({exc.strerror or exc}); "
                         "choose a writable -o") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise InputError(f"output folder {out} is not writable; choose a writable -o")
    return out, created


# -- records --------------------------------------------------------------------------------

def model_fingerprint(model: Any) -> str:
    """SHA-256 (16 hex digits) of the model's weights, buffers and class names."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    meta = getattr(model, "meta", None) or {}
    h.update(json.dumps(meta.get("class_names"), default=str).encode())
    return h.hexdigest()[:16]


def record_path(path: Path, outdir: Path) -> Path:
    """Where the record of ``path`` goes: ``OUTDIR/.cnnseg/<stem>.json`` (hidden)."""
    return Path(outdir) / ".cnnseg" / f"{output_stem(Path(path))[0]}.json"


def completed_record(path: Path, outdir: Path, options: CohortOptions, fingerprint: str) -> dict | None:
    """The record of an earlier run when its outputs are complete for this model and options."""
    try:
        rec = json.loads(record_path(path, outdir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (rec.get("record_version") != RECORD_VERSION or rec.get("model") != fingerprint
            or rec.get("options") != json.loads(json.dumps(options.output_key()))
            or rec.get("status") != "done"):
        return None
    if not all(Path(p).exists() for p in rec.get("outputs", [])):
        return None
    return rec


def _write_json_atomic(path: Path, data: dict) -> None:
    from .io._atomic import _atomic_path

    with _atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str), encoding="utf-8")


def class_volumes_ml(counts: Sequence[int], names: Sequence[str], spacing: Sequence[float],
                     unit: str | None) -> dict[str, float]:
    """Per-class volume in mL from voxel counts and the spacing (z, y, x) in ``unit`` (mm
    when None)."""
    per_voxel = float(np.prod(spacing)) * _ML_PER_CUBIC_UNIT.get(unit or "mm", 1e-3)
    return {str(n): float(c) * per_voxel for n, c in zip(names, counts, strict=False)}


def count_labels(labels: Any, k: int, slab: int = 16) -> list[int]:
    """Voxels per class of a (Z, Y, X) label array (numpy or zarr), slab by slab."""
    counts = np.zeros(k, dtype=np.int64)
    for z0 in range(0, labels.shape[0], slab):
        counts += np.bincount(np.asarray(labels[z0:z0 + slab]).ravel(), minlength=k)[:k]
    return counts.tolist()


def failed_record(path: Path, exc: BaseException) -> dict[str, Any]:
    """A record for a volume that could not be segmented: the error as one line."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, CnnsegError):
        msg = f"{type(exc).__name__}: {msg}"
    return {"input": str(path), "status": "failed", "error": msg[:500]}


# -- one volume -----------------------------------------------------------------------------

def segment_one(path: str | os.PathLike, model: Any, outdir: str | os.PathLike,
                options: CohortOptions | None = None, *, fingerprint: str | None = None,
                progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict[str, Any]:
    """Segment one volume file into ``outdir``; returns its record (status ``done``).

    Outputs are written atomically on the source geometry; the record
    ``.cnnseg/<stem>.json`` is written last. Zarr inputs / outputs stream tile by tile.

    Raises:
        CnnsegError: unreadable input, wrong channels, unwritable output.
        Cancelled: ``cancel()`` returned True.
    """
    from .cohort_io import read_input, write_outputs

    path, outdir = Path(path), Path(outdir)
    options = options or CohortOptions()
    start = time.perf_counter()
    volume = read_input(path, model, options.channel)
    outputs, counts, names = write_outputs(volume, model, path, outdir, options,
                                           progress=progress, cancel=cancel)
    rec = make_record(path, volume, time.perf_counter() - start, counts, names, outputs,
                      fingerprint or model_fingerprint(model), options)
    write_record(path, outdir, rec)
    return rec


def make_record(path: Path, volume: Any, seconds: float, counts: Sequence[int],
                names: Sequence[str], outputs: Sequence[Path], fingerprint: str,
                options: CohortOptions) -> dict[str, Any]:
    """The record of a segmented volume (status ``done``): shape (Z, Y, X), seconds,
    voxels/s, mL per class, outputs, and what makes it reusable (model, options)."""
    shape = [int(s) for s in volume.spatial_shape]
    return {
        "record_version": RECORD_VERSION, "input": str(path), "status": "done", "error": "",
        "shape": shape, "seconds": round(seconds, 3),
        "voxels_per_s": round(float(np.prod(shape)) / max(seconds, 1e-9), 1),
        "volume_ml": class_volumes_ml(counts, names, volume.spacing, volume.metadata.get("unit")),
        "outputs": [str(p) for p in outputs], "model": fingerprint,
        "options": json.loads(json.dumps(options.output_key())),
        "host": os.uname().nodename, "pid": os.getpid(),
    }


def write_record(path: Path, outdir: Path, record: dict[str, Any]) -> Path:
    """Write the record atomically (last, once every output is written)."""
    dest = record_path(path, outdir)
    _write_json_atomic(dest, record)
    return dest


def run_one(path: Path, model: Any, outdir: Path, options: CohortOptions, fingerprint: str,
            progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> dict[str, Any]:
    """:func:`segment_one` that never raises for one volume: skips complete ones, turns
    errors into a ``failed`` record (one line). Only :class:`Cancelled` propagates."""
    if not options.overwrite:
        rec = completed_record(path, outdir, options, fingerprint)
        if rec is not None:
            log.info("%s: complete from an earlier run, skipped", Path(path).name)
            return {**rec, "status": "skipped"}
    try:
        return segment_one(path, model, outdir, options, fingerprint=fingerprint,
                           progress=progress, cancel=cancel)
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - one bad volume must not stop the cohort
        log.debug("%s failed", path, exc_info=True)
        return failed_record(path, exc)


# -- the cohort -----------------------------------------------------------------------------

def segment_cohort(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike,
    model: Any,
    outdir: str | os.PathLike,
    options: CohortOptions | None = None,
    *,
    engine: CohortEngine | None = None,
    progress: ProgressFn | None = None,
    volume_progress: Callable[[str], ProgressFn | None] | None = None,
    on_record: Callable[[dict[str, Any]], None] | None = None,
    cancel: CancelFn | None = None,
) -> CohortResult:
    """Segment every volume of a cohort with one model; write ``outdir/summary.csv``.

    Args:
        inputs: files, globs, folders, ``.txt`` / ``.csv`` lists (see :func:`expand_inputs`).
        model: a network of ``core.models`` (sent once to each dask worker).
        outdir: output folder (created if missing).
        options: outputs and prediction settings (:class:`CohortOptions`; None = defaults).
        engine: where it runs (:class:`CohortEngine`: here, dask workers, blocks; None = here).
        progress: ``progress(volumes_done, volumes_total)``.
        volume_progress: ``volume_progress(name)`` gives the ``progress(done, total)`` of one
            volume's tiles (here) or blocks (block mode).
        on_record: called with each volume's record as it finishes.
        cancel: polled between tiles (here) or every 0.1 s (dask); raises Cancelled.

    Returns:
        :class:`CohortResult` (records in input order, ``summary_path``).
    """
    options = options or CohortOptions()
    engine = engine or CohortEngine()
    paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)
    if not paths:
        raise InputError("no input volume given")
    out, _ = prepare_outdir(outdir)
    check_distinct_outputs(paths, options.format, out)
    fingerprint = model_fingerprint(model)
    done = 0
    report(progress, 0, len(paths))

    def finished(rec: dict[str, Any]) -> None:
        nonlocal done
        done += 1
        if on_record is not None:
            on_record(rec)
        report(progress, done, len(paths))

    if engine.block_shape is not None:
        from .blocks import run_cohort_in_blocks

        records = run_cohort_in_blocks(paths, model, out, options, fingerprint, engine,
                                       on_record=finished, volume_progress=volume_progress,
                                       cancel=cancel)
    elif engine.on_dask:
        from .distributed import run_cohort_on_dask

        records = run_cohort_on_dask(paths, model, out, options, fingerprint, engine,
                                     on_record=finished, cancel=cancel)
    else:
        records = []
        for path in paths:
            check_cancel(cancel, "cohort")
            tiles = volume_progress(path.name) if volume_progress else None
            records.append(run_one(path, model, out, options, fingerprint, tiles, cancel))
            finished(records[-1])
    result = CohortResult(records, write_summary(records, out / SUMMARY_NAME))
    log.info("cohort: %d volumes, %d failed; summary in %s", len(records), len(result.failed),
             result.summary_path)
    return result


def write_summary(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """``summary.csv``: one row per volume; ``ml_<class>`` columns for every class seen."""
    classes: list[str] = []
    for r in records:
        classes += [c for c in r.get("volume_ml", {}) if c not in classes]
    cols = ["input", "status", "shape", "seconds", "voxels_per_s", *[f"ml_{c}" for c in classes], "error"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in records:
        ml = r.get("volume_ml", {})
        shape = "x".join(str(s) for s in r.get("shape", []))
        w.writerow([r["input"], r["status"], shape, r.get("seconds", ""), r.get("voxels_per_s", ""),
                    *[f"{ml[c]:.6g}" if c in ml else "" for c in classes], r.get("error", "")])
    from .io._atomic import _atomic_path

    with _atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    return path


def summary_json(result: CohortResult) -> str:
    """The records as a JSON document (``cnnseg segment --json``)."""
    keep = ("input", "status", "error", "shape", "seconds", "voxels_per_s", "volume_ml", "outputs")
    return json.dumps({"summary": str(result.summary_path),
                       "volumes": [{k: r[k] for k in keep if k in r} for r in result.records]}, indent=1)
