"""3D Slicer command-line module (``cnnseg-slicer``) and ``cnnseg slicer-install DIR``.

3D Slicer runs any program that describes itself in the Slicer Execution Model XML as a module
with a generated GUI: it writes the selected volumes to temporary files (NRRD), runs the program
with ``--<longflag> value`` options followed by the positional (``<index>``) arguments, shows the
``<filter-progress>`` lines the program prints on stdout and loads the outputs back.

One Python description (:func:`_groups`) generates both the XML (:func:`xml_text`, printed by
``cnnseg-slicer --xml`` and shipped as ``slicer_cli/CNNSegment.xml``) and the argparse parser
(:func:`build_parser`), so that the two cannot drift apart.

Usage as Slicer passes it::

    cnnseg-slicer --model NAME [--model_file CKPT] [--scribbles S.nrrd --finetune_seconds 30
        [--output_model NEW.safetensors]] [--probability P.nrrd] --device auto \
        --precision auto [--tile_size 64,64,64] --overlap 0.25 --batch_size 0 \
        [--largest_component] INPUT.nrrd OUTPUT_LABELS.nrrd

This module imports no torch at import time: ``--xml`` answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from xml.sax.saxutils import escape, quoteattr

log = logging.getLogger(__name__)

MODULE_NAME = "CNNSegment"
EXIT_USER_ERROR = 2
EXIT_CANCELLED = 130
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
PRETRAINED_DIR = _PACKAGE_DIR / "core" / "models" / "pretrained"
SHIPPED_DIR = _PACKAGE_DIR / "slicer_cli"
NO_SHIPPED_MODEL = "none"
#: precisions core.training.finetune accepts (fp16 is an inference-only choice)
FINETUNE_PRECISIONS = ("auto", "fp32", "bf16")


def shipped_model_names() -> list[str]:
    """Names of the models shipped in ``core/models/pretrained`` (sorted), without importing torch.

    A shipped model is a ``<name>.safetensors`` file with its ``<name>.json`` sidecar.
    """
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(
        p.stem for p in PRETRAINED_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file()
    )


# ---------- One description -> XML and argparse ---------------------------------------------
@dataclass(frozen=True)
class Param:
    """One Slicer Execution Model parameter.

    Attributes:
        tag: XML element (``image``, ``file``, ``string-enumeration``, ``integer``, ``float``,
            ``integer-vector``, ``boolean``).
        name: XML ``<name>`` and argparse ``dest`` (an identifier).
        label: short GUI label.
        description: tooltip / help text.
        longflag: option name without dashes (Slicer adds ``--``), or None for an index param.
        index: position of an index (positional) parameter, or None for a flagged one.
        channel: ``"input"``, ``"output"`` or None.
        default: default value as XML text, or None.
        elements: the choices of an enumeration.
        constraints: ``(minimum, maximum, step)`` of a scalar, or None.
        attrs: XML attributes in order, e.g. ``(("type", "label"), ("fileExtensions", ".nrrd"))``.
    """

    tag: str
    name: str
    label: str
    description: str
    longflag: str | None = None
    index: int | None = None
    channel: str | None = None
    default: str | None = None
    elements: tuple[str, ...] = ()
    constraints: tuple[float, float, float] | None = None
    attrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Group:
    """A ``<parameters>`` group of the GUI."""

    label: str
    description: str
    params: tuple[Param, ...]
    advanced: bool = False


_NRRD = (("fileExtensions", ".nrrd"),)
_LABEL_NRRD = (("type", "label"), ("fileExtensions", ".nrrd"))


def _groups() -> tuple[Group, ...]:
    models = shipped_model_names() or [NO_SHIPPED_MODEL]
    return (
        Group("Input and output", "Volume to segment and the label map to write.", (
            Param("image", "inputVolume", "Input volume",
                  "Scalar 3D volume to segment (e.g. an MRI or CT scan).",
                  index=0, channel="input", attrs=_NRRD),
            Param("image", "outputLabelmap", "Output label map",
                  "Label map on the input's exact geometry: 0 = background, k = class k.",
                  index=1, channel="output", attrs=_LABEL_NRRD),
            Param("image", "outputProbability", "Output probability",
                  "Optional probability map (0..1) of the class chosen below.",
                  longflag="probability", channel="output", attrs=_NRRD),
            Param("integer", "probabilityClass", "Probability of class",
                  "Class index whose probability is written (0 = background, 1 = first class).",
                  longflag="probability_class", default="1", constraints=(0, 255, 1)),
        )),
        Group("Model", "Network used for the segmentation.", (
            Param("string-enumeration", "model", "Model",
                  "Model shipped with napari-cnnseg (ignored when a model file is given).",
                  longflag="model", default=models[0], elements=tuple(models)),
            Param("file", "modelFile", "Model file",
                  "Optional napari-cnnseg checkpoint (.safetensors with its .json sidecar), "
                  "e.g. one saved after fine-tuning; overrides Model.",
                  longflag="model_file", channel="input",
                  attrs=(("fileExtensions", ".safetensors"),)),
        )),
        Group("Fine-tune on scribbles", "Optionally adapt the model to this volume first.", (
            Param("image", "scribbles", "Scribbles",
                  "Optional label map of a few painted voxels: 0 = unpainted, 1 = background, "
                  "2 = class 1, 3 = class 2, ... The model is fine-tuned on them, then applied.",
                  longflag="scribbles", channel="input", attrs=_LABEL_NRRD),
            Param("float", "finetuneSeconds", "Fine-tune seconds",
                  "Time budget of the fine-tuning, in seconds (used only with scribbles).",
                  longflag="finetune_seconds", default="30", constraints=(1, 3600, 1)),
            Param("file", "outputModel", "Save fine-tuned model",
                  "Optional path to save the fine-tuned model (.safetensors + .json sidecar), "
                  "to reuse it as Model file.",
                  longflag="output_model", channel="output",
                  attrs=(("fileExtensions", ".safetensors"),)),
        )),
        Group("Compute", "Device, precision and tiling of the prediction.", (
            Param("string-enumeration", "device", "Device",
                  "Compute device: auto picks a GPU when one is usable, else the CPU.",
                  longflag="device", default="auto", elements=("auto", "cpu", "cuda")),
            Param("string-enumeration", "precision", "Precision",
                  "Arithmetic: auto uses bfloat16/float16 where the device runs it natively "
                  "(inference: only if a probe tile agrees with float32). fp16 is for GPU "
                  "inference; fine-tuning then uses auto.",
                  longflag="precision", default="auto", elements=("auto", "fp32", "bf16", "fp16")),
            Param("integer-vector", "tileSize", "Tile size (z,y,x)",
                  "Tile size in voxels along z,y,x (slice axis first), or one number for a "
                  "cube; empty = automatic.",
                  longflag="tile_size"),
            Param("float", "overlap", "Tile overlap",
                  "Overlap between tiles as a fraction of the tile (same-padding networks; "
                  "valid-convolution networks tile exactly without it).",
                  longflag="overlap", default="0.25", constraints=(0.0, 0.9, 0.05)),
            Param("integer", "batchSize", "Batch size",
                  "Tiles per forward pass; 0 = automatic.",
                  longflag="batch_size", default="0", constraints=(0, 64, 1)),
            Param("boolean", "largestComponent", "Keep largest component",
                  "Keep only the largest connected component of each class.",
                  longflag="largest_component", default="false"),
        ), advanced=True),
    )


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _param_xml(p: Param) -> list[str]:
    attrs = "".join(f" {k}={quoteattr(v)}" for k, v in p.attrs)
    lines = [f"    <{p.tag}{attrs}>", f"      <name>{p.name}</name>"]
    if p.index is not None:
        lines.append(f"      <index>{p.index}</index>")
    else:
        lines.append(f"      <longflag>{p.longflag}</longflag>")
    lines.append(f"      <description>{escape(p.description)}</description>")
    lines.append(f"      <label>{escape(p.label)}</label>")
    if p.default is not None:
        lines.append(f"      <default>{escape(p.default)}</default>")
    if p.channel is not None:
        lines.append(f"      <channel>{p.channel}</channel>")
    lines += [f"      <element>{escape(e)}</element>" for e in p.elements]
    if p.constraints is not None:
        lo, hi, step = p.constraints
        lines += [
            "      <constraints>",
            f"        <minimum>{_num(lo)}</minimum>",
            f"        <maximum>{_num(hi)}</maximum>",
            f"        <step>{_num(step)}</step>",
            "      </constraints>",
        ]
    lines.append(f"    </{p.tag}>")
    return lines


def xml_text() -> str:
    """The Slicer Execution Model XML, in the canonical element order of CTK's schema."""
    from .. import __version__

    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        "<executable>",
        "  <category>Segmentation</category>",
        "  <title>CNN Segmentation</title>",
        "  <description>Segment a 3D volume with a convolutional network (napari-cnnseg), "
        "optionally fine-tuned first on a few painted scribbles.</description>",
        f"  <version>{escape(__version__)}</version>",
        "  <documentation-url>https://github.com/napari-cnnseg/napari-cnnseg</documentation-url>",
        "  <license>BSD-3-Clause</license>",
        "  <contributor>napari-cnnseg developers</contributor>",
    ]
    for group in _groups():
        adv = ' advanced="true"' if group.advanced else ""
        lines += [
            f"  <parameters{adv}>",
            f"    <label>{escape(group.label)}</label>",
            f"    <description>{escape(group.description)}</description>",
        ]
        for p in group.params:
            lines += _param_xml(p)
        lines.append("  </parameters>")
    lines.append("</executable>")
    return "\n".join(lines) + "\n"


def parse_int_vector(text: str) -> tuple[int, int, int] | None:
    """Parse Slicer's integer-vector text (``"64,64,32"`` or ``"64"``); empty gives None."""
    parts = [t for t in text.replace(",", " ").split() if t]
    if not parts:
        return None
    try:
        values = [int(t) for t in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 64,64,64, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"expected 1 or 3 positive integers (z,y,x) like 64,64,64, got {text!r}"
        )
    return (values[0], values[1], values[2])


_TYPES: dict[str, Any] = {"integer": int, "float": float, "integer-vector": parse_int_vector}


def build_parser() -> argparse.ArgumentParser:
    """argparse parser of the Slicer command line, generated from the same description as the XML."""
    parser = argparse.ArgumentParser(
        prog="cnnseg-slicer",
        description="3D Slicer CLI module of napari-cnnseg: segment a volume with a CNN, "
        "optionally fine-tuned first on scribbles. Progress goes to stdout in Slicer's format.",
    )
    parser.add_argument("--xml", action="store_true", help="print the Slicer module XML and exit")
    parser.add_argument("--returnparameterfile", help=argparse.SUPPRESS)
    params = [p for g in _groups() for p in g.params]
    for p in sorted((p for p in params if p.index is not None), key=lambda q: q.index or 0):
        parser.add_argument(p.name, metavar=p.name, help=p.description)
    for p in params:
        if p.index is not None:
            continue
        flag = f"--{p.longflag}"
        if p.tag == "boolean":
            parser.add_argument(flag, dest=p.name, action="store_true", help=p.description)
            continue
        kwargs: dict[str, Any] = {"dest": p.name, "help": p.description}
        convert = _TYPES.get(p.tag, str)
        kwargs["type"] = convert
        if p.elements:
            kwargs["choices"] = p.elements
        if p.default is not None:
            kwargs["default"] = convert(p.default)
        parser.add_argument(flag, **kwargs)
    return parser


def _check_constraints(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for p in (p for g in _groups() for p in g.params):
        if p.constraints is None:
            continue
        value = getattr(args, p.name)
        lo, hi, _ = p.constraints
        if value is not None and not lo <= value <= hi:
            parser.error(f"--{p.longflag} must be between {_num(lo)} and {_num(hi)}, got {value}")


# ---------- Progress in Slicer's protocol ---------------------------------------------------
class SlicerProgress:
    """Writes Slicer's progress lines (flushed) on a stream: overall progress is monotone 0..1.

    Args:
        stages: ``(key, weight)`` pairs in running order; weights are normalised.
        stream: text stream, stdout by default.
    """

    def __init__(self, stages: Sequence[tuple[str, float]], stream: TextIO | None = None):
        total = sum(w for _, w in stages)
        self._start: dict[str, float] = {}
        self._weight: dict[str, float] = {}
        acc = 0.0
        for key, weight in stages:
            self._start[key], self._weight[key] = acc, weight / total
            acc += weight / total
        self._stream = stream if stream is not None else sys.stdout
        self._stage = stages[0][0]
        self._last = -1.0
        self._t0 = time.perf_counter()

    def _write(self, text: str) -> None:
        self._stream.write(text + "\n")
        self._stream.flush()

    def _progress(self, value: float, stage_fraction: float) -> None:
        value = min(1.0, max(value, self._last, 0.0))
        if round(value, 3) == round(self._last, 3) and 0.0 < stage_fraction < 1.0:
            return  # unchanged at the printed precision
        self._last = value
        self._write(f"<filter-progress>{value:.4f}</filter-progress>")
        self._write(f"<filter-stage-progress>{stage_fraction:.4f}</filter-stage-progress>")

    def begin(self, comment: str) -> None:
        """Open the filter block and report 0."""
        self._write(f"<filter-start>\n<filter-name>{MODULE_NAME}</filter-name>\n"
                    f"<filter-comment>{escape(comment)}</filter-comment>\n</filter-start>")
        self._progress(0.0, 0.0)

    def stage(self, key: str, comment: str) -> None:
        """Start stage ``key`` (a key given to the constructor) with a status comment."""
        self._stage = key
        self._write(f"<filter-comment>{escape(comment)}</filter-comment>")
        self._progress(self._start[key], 0.0)

    def __call__(self, done: int, total: int) -> None:
        """``progress(done, total)`` callback of the engine for the current stage."""
        frac = min(1.0, max(0.0, done / total)) if total > 0 else 1.0
        self._progress(self._start[self._stage] + frac * self._weight[self._stage], frac)

    def end(self) -> None:
        """Report 1 and close the filter block."""
        if self._last < 1.0:
            self._progress(1.0, 1.0)
        self._write(f"<filter-end>\n<filter-name>{MODULE_NAME}</filter-name>\n"
                    f"<filter-time>{time.perf_counter() - self._t0:.1f}</filter-time>\n</filter-end>")


# ---------- The run itself ------------------------------------------------------------------
def _same_grid(a: Any, b: Any) -> bool:
    import numpy as np

    return (
        a.array.shape[-3:] == b.array.shape[-3:]
        and np.allclose(a.spacing, b.spacing, rtol=1e-4, atol=1e-6)
        and np.allclose(a.origin, b.origin, rtol=0, atol=1e-3 * min(a.spacing))
        and np.allclose(a.direction, b.direction, atol=1e-4)
    )


def scribbles_on_grid(scribbles: Any, image: Any) -> Any:
    """Scribble values (Z, Y, X) on the image's voxel grid.

    A scribble label map on another grid (Slicer crops label maps exported from a segmentation
    to their extent) is resampled onto the image grid with nearest-neighbour interpolation in
    physical (LPS) space; voxels outside it are unpainted (0).

    Args:
        scribbles: scribble :class:`~napari_cnnseg.core.io.Volume` (Z, Y, X), integer values.
        image: image Volume (Z, Y, X) or (C, Z, Y, X) whose grid is the target.

    Returns:
        int64 array with the image's (Z, Y, X) shape.
    """
    import numpy as np

    from ..core.errors import InputError
    from ..core.io import Volume, volume_to_sitk

    if scribbles.array.ndim != 3:
        raise InputError(
            f"the scribbles must be a 3D label map, got shape {scribbles.array.shape}; "
            "export the scribble segment(s) as one label map volume"
        )
    values = np.asarray(scribbles.array)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.all(np.mod(values, 1) == 0):
            raise InputError("the scribbles must hold integer labels; pass a label map volume")
        values = values.astype(np.int64)
    if _same_grid(scribbles, image):
        return values.astype(np.int64, copy=False)
    import SimpleITK as sitk

    log.warning("scribbles are on another voxel grid than the input: resampling them onto it")
    ref = volume_to_sitk(image.with_array(np.zeros(image.array.shape[-3:], dtype=np.uint8)))
    moving = volume_to_sitk(Volume(values.astype(np.int32), scribbles.spacing, scribbles.origin,
                                   scribbles.direction))
    moved = sitk.Resample(moving, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    return sitk.GetArrayFromImage(moved).astype(np.int64)


def keep_largest_components(labels: Any) -> Any:
    """Keep only the largest 26-connected component of each foreground class; the rest becomes 0.

    Args:
        labels: integer label map (Z, Y, X).

    Returns:
        The filtered label map (new array, same dtype).
    """
    import numpy as np
    from scipy import ndimage

    out = np.array(labels, copy=True)
    for k in np.unique(out):
        if k == 0:
            continue
        comp, n = ndimage.label(out == k, structure=np.ones((3, 3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp != 0) & (comp != int(np.argmax(sizes)))] = 0
    return out


def _warn_spacing(trained: Any, spacing: Sequence[float]) -> None:
    """Warn (stdout) when the voxel size differs by more than 1.5x from the model's training."""
    if not trained or len(trained) != 3:
        return
    ratios = [max(a / b, b / a) for a, b in zip(spacing, trained, strict=True) if a > 0 and b > 0]
    if ratios and max(ratios) > 1.5:
        log.warning(
            "the model was trained on %s mm voxels (z,y,x), the input has %s mm: results may "
            "suffer; paint a few scribbles to fine-tune it on this volume",
            "x".join(f"{v:g}" for v in trained), "x".join(f"{v:g}" for v in spacing),
        )


def _check_paths(args: argparse.Namespace) -> None:
    from ..core.errors import InputError

    for name in ("inputVolume", "modelFile", "scribbles"):
        path = getattr(args, name)
        if path and not Path(path).exists():
            raise InputError(f"{name}: file not found: {path}")
    if args.model == NO_SHIPPED_MODEL and not args.modelFile:
        raise InputError("no model is shipped with this installation: choose a Model file")


def run_segmentation(args: argparse.Namespace, stream: TextIO | None = None) -> None:
    """Read, (fine-tune,) segment and write as the parsed arguments say, reporting progress.

    Args:
        args: namespace from :func:`build_parser` (dests are the XML parameter names).
        stream: where progress lines go (stdout by default).

    Raises:
        CnnsegError: bad input, model or option; the message says what to do.
    """
    _check_paths(args)
    import numpy as np

    from ..core.errors import InputError
    from ..core.io import read_volume, write_volume
    from ..core.models import model_meta, resolve_model
    from ..core.pipeline import segment_volume

    finetuning = bool(args.scribbles)
    stages = [("read", 0.05)]
    stages += [("finetune", 0.45), ("segment", 0.45)] if finetuning else [("segment", 0.85)]
    stages += [("write", 0.05)]
    progress = SlicerProgress(stages, stream)
    progress.begin("Reading the input volume and the model")

    image = read_volume(args.inputVolume, all_channels=True)
    model = resolve_model(args.modelFile or args.model)
    num_classes = int(getattr(model, "num_classes", 0) or len(model_meta(model)["class_names"]))
    if args.outputProbability and not 0 <= args.probabilityClass < num_classes:
        raise InputError(
            f"probability class {args.probabilityClass} does not exist: the model has "
            f"{num_classes} classes (0..{num_classes - 1}, 0 = background)"
        )
    _warn_spacing(model_meta(model).get("spacing"), image.spacing)
    scribbles = None
    if finetuning:
        scribbles = scribbles_on_grid(read_volume(args.scribbles), image)
        if scribbles.min() < 0 or scribbles.max() > num_classes:
            raise InputError(
                f"scribble values must be 0..{num_classes} for this {num_classes}-class model "
                f"(0 = unpainted, 1 = background, k = class k-1), found "
                f"{int(scribbles.min())}..{int(scribbles.max())}"
            )
        if not scribbles.any():
            raise InputError("the scribble label map is empty: paint a few voxels of each class")
    progress(1, 1)

    if finetuning:
        from ..core.training import finetune

        progress.stage("finetune", f"Fine-tuning on scribbles ({args.finetuneSeconds:g} s)")
        train_precision = args.precision
        if train_precision not in FINETUNE_PRECISIONS:
            log.warning("fine-tuning does not run in %s; it uses precision auto", train_precision)
            train_precision = "auto"
        finetune(model, image.array, scribbles, seconds=float(args.finetuneSeconds),
                 progress=progress, device=args.device, precision=train_precision)
        if args.outputModel:
            from ..core.models import save_model

            meta = dict(model_meta(model))
            note = f"fine-tuned in 3D Slicer on scribbles of {Path(args.inputVolume).name}"
            meta["description"] = "; ".join(t for t in (meta.get("description"), note) if t)
            save_model(args.outputModel, model, **meta)

    progress.stage("segment", "Segmenting")
    result = segment_volume(
        image, model, probabilities=bool(args.outputProbability), uncertainty=False,
        tile_shape=args.tileSize, overlap=args.overlap, batch_size=args.batchSize or None,
        device=args.device, precision=args.precision, progress=progress,
    )
    progress.stage("write", "Writing the label map")
    labels = result.labels
    if args.largestComponent:
        labels = labels.with_array(keep_largest_components(labels.array))
    write_volume(args.outputLabelmap, labels)
    progress(1, 2)
    if args.outputProbability:
        prob = np.asarray(result.probabilities.array[args.probabilityClass], dtype=np.float32)
        write_volume(args.outputProbability, result.labels.with_array(prob))
    progress(2, 2)
    progress.end()


@contextlib.contextmanager
def _quiet_stderr(redirect_fd: bool) -> Iterator[None]:
    """Route warnings and log records to stdout: Slicer reports any stderr output as an error.

    Args:
        redirect_fd: also point file descriptor 2 at stdout for the duration, so that native
            libraries' messages (e.g. torch's C++ warnings) cannot reach stderr either.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("cnnseg-slicer: %(levelname)s: %(message)s"))
    root.addHandler(handler)
    logging.captureWarnings(True)
    saved_fd = None
    if redirect_fd:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stdout.flush()
            sys.stderr.flush()
            saved_fd = os.dup(2)
            os.dup2(sys.stdout.fileno(), 2)
    try:
        yield
    finally:
        if saved_fd is not None:
            sys.stdout.flush()
            os.dup2(saved_fd, 2)
            os.close(saved_fd)
        logging.captureWarnings(False)
        root.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``cnnseg-slicer`` (and of the Slicer launcher); returns the exit code.

    ``--xml`` prints only the module XML. Otherwise the run writes progress on stdout and
    nothing on stderr unless it fails: then one clear line and a non-zero exit code
    (2 = bad input or option, 130 = cancelled, 1 = unexpected error with its traceback).
    """
    as_process = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--xml" in argv:
        sys.stdout.write(xml_text())
        sys.stdout.flush()
        return 0
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_constraints(parser, args)
    except SystemExit as exc:  # argparse printed usage + error (or --help)
        return int(exc.code or 0)
    from ..core.errors import Cancelled, CnnsegError

    try:
        with _quiet_stderr(redirect_fd=as_process):
            run_segmentation(args)
    except Cancelled as exc:
        print(f"cnnseg-slicer: {exc}", file=sys.stderr)
        return EXIT_CANCELLED
    except CnnsegError as exc:
        print(f"cnnseg-slicer: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("cnnseg-slicer: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    return 0


# ---------- cnnseg slicer-install DIR -------------------------------------------------------
def launcher_text(kind: str, python: str | None = None) -> tuple[str, str]:
    """File name and text of a Slicer launcher.

    Args:
        kind: ``"python-real"`` (``CNNSegment.py`` run by Slicer's own Python, which needs
            napari-cnnseg pip-installed into Slicer) or ``"this-python"`` (``CNNSegment`` /
            ``CNNSegment.bat`` that runs ``python``, default this interpreter, where
            napari-cnnseg is installed).
        python: interpreter for ``"this-python"``; default :data:`sys.executable`.
    """
    if kind == "python-real":
        return f"{MODULE_NAME}.py", (SHIPPED_DIR / f"{MODULE_NAME}.py").read_text(encoding="utf-8")
    python = python or sys.executable
    if os.name == "nt":
        return f"{MODULE_NAME}.bat", f'@"{python}" -m napari_cnnseg.cli.slicer %*\r\n'
    if any(c.isspace() for c in python):  # a shebang cannot hold spaces: go through sh
        body = f'#!/bin/sh\nexec "{python}" -m napari_cnnseg.cli.slicer "$@"\n'
    else:
        body = (f"#!{python}\n# 3D Slicer CLI launcher of napari-cnnseg (runs the Python above).\n"
                "import sys\n\nfrom napari_cnnseg.cli.slicer import main\n\nsys.exit(main())\n")
    return MODULE_NAME, body


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def install(directory: str | os.PathLike[str], kind: str = "python-real") -> list[Path]:
    """Write the launcher and its XML into ``directory`` (created if missing).

    Any launcher of the other kind left there is removed, since two files with the basename
    ``CNNSegment`` would register the same Slicer module twice.

    Returns:
        Paths written: ``[launcher, xml]``.
    """
    from ..core.errors import InputError

    if kind not in ("python-real", "this-python"):
        raise InputError(f"unknown launcher kind {kind!r}; choose python-real or this-python")
    folder = Path(directory).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} is a file; give a folder for the Slicer module")
    folder.mkdir(parents=True, exist_ok=True)
    name, text = launcher_text(kind)
    for other in (f"{MODULE_NAME}.py", MODULE_NAME, f"{MODULE_NAME}.bat"):
        if other != name and (folder / other).is_file():
            (folder / other).unlink()
    launcher, xml = folder / name, folder / f"{MODULE_NAME}.xml"
    _write_atomic(launcher, text, 0o755)
    _write_atomic(xml, xml_text(), 0o644)
    return [launcher, xml]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cnnseg slicer-install DIR``."""
    p = sub.add_parser(
        "slicer-install",
        help="write the 3D Slicer module (launcher + XML) into a folder",
        description="Write the CNNSegment 3D Slicer CLI module into DIR; then add DIR to "
        "Slicer's additional module paths.",
    )
    p.add_argument("dir", metavar="DIR", help="folder for the module (use an empty folder)")
    p.add_argument(
        "--launcher", choices=("python-real", "this-python"), default="python-real",
        help="python-real (default): CNNSegment.py run by Slicer's Python, which needs "
        "'PythonSlicer -m pip install napari-cnnseg'; this-python: CNNSegment run by this "
        f"Python ({sys.executable}), no install into Slicer needed",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``cnnseg slicer-install``: write the files and print the next steps."""
    written = install(args.dir, args.launcher)
    folder = written[0].parent
    print(f"Wrote {written[0]} and {written[1]}.")
    others = sorted(p.name for p in folder.iterdir() if p not in written)
    if others:
        print(f"Note: {folder} holds other files too ({', '.join(others[:5])}); Slicer probes "
              "every file in a module path, so an empty folder is best.")
    print("Next steps:")
    step = 1
    if args.launcher == "python-real":
        print(f"  {step}. Install napari-cnnseg into Slicer's Python (once): in a shell run\n"
              "       PythonSlicer -m pip install napari-cnnseg\n"
              "     or in Slicer's Python console: slicer.util.pip_install('napari-cnnseg')")
        step += 1
    print(f"  {step}. In 3D Slicer: Edit > Application Settings > Modules > Additional module "
          f"paths > Add,\n     choose {folder}, then restart Slicer "
          f"(or start it once with: Slicer --additional-module-paths {folder}).")
    print(f"  {step + 1}. The module 'CNN Segmentation' appears under Segmentation "
          f"(slicer.modules.{MODULE_NAME.lower()} in Python).")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
