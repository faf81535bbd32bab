"""One description of the 3D Slicer module's parameters -> its XML and its argparse parser.

:func:`_groups` describes every parameter once; :func:`xml_text` renders the Slicer Execution
Model XML (printed by ``cnnseg-slicer --xml`` and shipped as ``slicer_cli/CNNSegment.xml``) and
:func:`build_parser` the matching argparse parser, so that the two cannot drift apart.
Public names are re-exported by :mod:`napari_cnnseg.cli.slicer`. Standard library only: no
torch or numpy, so ``--xml`` answers in a fraction of a second.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ..core.precisions import PRECISION_CHOICES

MODULE_NAME = "CNNSegment"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
PRETRAINED_DIR = _PACKAGE_DIR / "core" / "models" / "pretrained"
SHIPPED_DIR = _PACKAGE_DIR / "slicer_cli"
NO_SHIPPED_MODEL = "none"


def shipped_model_names() -> list[str]:
    """Names of the models shipped in ``core/models/pretrained`` (sorted), without importing torch.

    A shipped model is a ``<name>.safetensors`` file with its ``<name>.json`` sidecar.
    """
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(
        p.stem for p in PRETRAINED_DIR.glob("*.safetensors") if p.with_suffix(".json").is_file()
    )


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
                  longflag="precision", default="auto", elements=PRECISION_CHOICES),
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

