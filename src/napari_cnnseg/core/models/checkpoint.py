"""Safe checkpoints: safetensors weights + a JSON sidecar; never pickle.

``save_model("runs/liver", model, class_names=[...])`` writes ``runs/liver.safetensors``
(tensors only: loading one cannot execute code) and ``runs/liver.json``::

    {"format": "napari-cnnseg-model", "format_version": 1, "package_version": "0.1.0",
     "arch": "unet", "config": {...}, "weights_sha256": "...",
     "meta": {"class_names": [...], "normalization": {...}, "spacing": [z, y, x], ...}}

Both files are written atomically (temporary file in the same folder + ``os.replace``),
weights first, so a crash never leaves a sidecar pointing at half-written weights.
``load_model`` refuses ``.pt/.pth/.ckpt/.pkl`` pickles (``torch.load`` is never called).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..normalization import DEFAULT_NORMALIZATION

log = logging.getLogger(__name__)

FORMAT = "napari-cnnseg-model"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
_SUFFIXES = (".safetensors", ".json")


def _package_version() -> str:
    from ... import __version__

    return __version__


def _stem(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    return p.with_suffix("") if p.suffix in _SUFFIXES else p


def _jsonable(value: Any, key: str) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, key) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalar
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InputError(f"model metadata {key!r} is not JSON-able ({type(value).__name__}); "
                     "pass numbers, strings, lists or dicts")


def default_meta(num_classes: int) -> dict[str, Any]:
    """Metadata a model without any has: generic class names, default normalisation."""
    return {
        "class_names": ["background"] + [f"class {k}" for k in range(1, num_classes)],
        "normalization": dict(DEFAULT_NORMALIZATION),
        "spacing": None,
        "description": "",
    }


def model_meta(model: nn.Module) -> dict[str, Any]:
    """``model.meta`` merged over the defaults (class names, normalisation, spacing, description)."""
    k = int(getattr(model, "num_classes", 2))
    meta = default_meta(k)
    meta.update(dict(getattr(model, "meta", None) or {}))
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != k:
        meta["class_names"] = default_meta(k)["class_names"]
    return meta


def _check_meta(meta: dict[str, Any], num_classes: int) -> dict[str, Any]:
    meta = _jsonable(meta, "meta")
    names = meta.get("class_names")
    if names is not None and (
        not isinstance(names, list) or len(names) != num_classes
        or not all(isinstance(n, str) for n in names)
    ):
        raise InputError(
            f"class_names must be a list of {num_classes} strings (one per model output, "
            f"background first), got {names!r}"
        )
    norm = meta.get("normalization")
    if norm is not None and (not isinstance(norm, dict) or "mode" not in norm):
        raise InputError(
            f"normalization must be a dict with a 'mode' (see core/normalization.py), got {norm!r}"
        )
    spacing = meta.get("spacing")
    if spacing is not None and (not isinstance(spacing, list) or len(spacing) != 3):
        raise InputError(f"spacing must be 3 numbers (z, y, x) in mm, got {spacing!r}")
    return meta


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model(path: str | os.PathLike[str], model: nn.Module, **meta: Any) -> Path:
    """Save ``model`` as ``<stem>.safetensors`` + ``<stem>.json`` (atomic writes).

    Args:
        path: target; ``.safetensors`` / ``.json`` suffixes are stripped to get the stem.
        model: a registry network (``arch_name`` + ``get_config()``); a dense patch
            classifier is saved as its patch classifier.
        **meta: ``class_names`` (K strings), ``normalization`` (dict), ``spacing`` (z, y, x) mm,
            ``description`` and any other JSON-able keys; merged over ``model.meta``.

    Returns:
        Path of the ``.safetensors`` file.

    Raises:
        InputError: not a registry network, or bad metadata (e.g. wrong number of class names).
        CheckpointError: the files cannot be written (the previous checkpoint stays intact).
    """
    from safetensors.torch import save_file

    source = getattr(model, "source_model", None)
    net = source if source is not None else model
    if not hasattr(net, "arch_name") or not hasattr(net, "get_config"):
        raise InputError(
            f"{type(model).__name__} is not a napari-cnnseg network (no arch_name/get_config); "
            "build it with build_model(...)"
        )
    stem = _stem(path)
    if stem.suffix in PICKLE_SUFFIXES:
        stem = stem.with_suffix("")
    merged = dict(getattr(model, "meta", None) or getattr(net, "meta", None) or {})
    merged.update(meta)
    k = int(net.num_classes)
    full = default_meta(k)
    full.update(_check_meta(merged, k))
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in net.state_dict().items()}
    weights = stem.with_name(stem.name + ".safetensors")
    sidecar = stem.with_name(stem.name + ".json")
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    except OSError as exc:
        raise CheckpointError(
            f"cannot write the model to {weights} ({exc}); choose a writable folder with free space"
        ) from exc
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "arch": net.arch_name,
        "config": net.get_config(),
        "meta": full,
        "weights": weights.name,
        "weights_sha256": _sha256(weights),
    }
    text = json.dumps(doc, indent=2)
    try:
        _atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"cannot write {sidecar} ({exc}); choose a writable folder") from exc
    log.info("saved model %s (%s) to %s", net.arch_name, weights.name, stem.parent)
    return weights


def _refuse_pickle(p: Path) -> None:
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{p.name} is a pickle-based PyTorch file; loading it could run arbitrary code, so "
            "napari-cnnseg refuses it. Convert it once, in a Python session you trust: "
            "build the network with build_model(...), load_state_dict(torch.load(..., "
            "weights_only=True)), then save_model(path, model) to get .safetensors + .json"
        )


def _check_safetensors_header(p: Path) -> None:
    size = p.stat().st_size
    with open(p, "rb") as f:
        head = f.read(9)
    # safetensors: u64 little-endian header length, then a JSON header starting with "{"
    if len(head) < 9 or head[8:9] != b"{" or int.from_bytes(head[:8], "little") > size - 8:
        raise CheckpointError(
            f"{p} is not a safetensors file (it may be a renamed pickle or truncated); "
            "save models with save_model(...)"
        )


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint written by :func:`save_model` (eval mode, with ``.meta``).

    Args:
        path: the stem, the ``.safetensors`` or the ``.json`` file.
        device: torch device for the weights ("cpu", "cuda", "auto", ...).

    Returns:
        The network with its weights and a ``meta`` dict attribute. A patch classifier
        loads as a :class:`PatchClassifier` (``as_dense(model)`` converts it).

    Raises:
        CheckpointError: pickle file, missing sidecar or weights, unknown architecture,
            tensor names or shapes that do not match the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .registry import build_model

    p = Path(path).expanduser()
    _refuse_pickle(p)
    stem = _stem(p)
    weights = stem.with_name(stem.name + ".safetensors")
    sidecar = stem.with_name(stem.name + ".json")
    for f, what in ((sidecar, "JSON sidecar"), (weights, "weights")):
        if not f.is_file():
            raise CheckpointError(
                f"model {what} {f} not found; a model is a pair <name>.safetensors + "
                "<name>.json written by save_model"
            )
    try:
        doc = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{sidecar} is not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar} is not a napari-cnnseg model sidecar")
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{sidecar} uses checkpoint format {doc.get('format_version')}, newer than this "
            f"napari-cnnseg ({FORMAT_VERSION}); upgrade napari-cnnseg"
        )
    _check_safetensors_header(weights)
    digest = doc.get("weights_sha256")
    if digest and digest != _sha256(weights):
        raise CheckpointError(
            f"{weights.name} does not match its sidecar {sidecar.name} (checksum differs); "
            "save both files together with save_model"
        )
    if not isinstance(doc.get("arch"), str) or not isinstance(doc.get("config", {}), dict):
        raise CheckpointError(f"{sidecar}: 'arch' must be a name and 'config' a JSON object")
    try:
        model = build_model(doc["arch"], **doc.get("config", {}))
    except (KeyError, InputError) as exc:
        raise CheckpointError(f"{sidecar}: cannot rebuild the architecture ({exc})") from None
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights} ({exc})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{weights.name} does not fit architecture {doc['arch']!r}: missing tensors "
            f"{missing[:5]}, unexpected tensors {extra[:5]}"
        )
    bad = [n for n, t in tensors.items() if tuple(t.shape) != tuple(expected[n].shape)]
    if bad:
        n = bad[0]
        raise CheckpointError(
            f"{weights.name}: tensor {n!r} has shape {tuple(tensors[n].shape)} but the "
            f"architecture needs {tuple(expected[n].shape)} ({len(bad)} mismatched)"
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    meta = doc.get("meta")
    model.meta = dict(meta) if isinstance(meta, dict) else {}
    model.meta.setdefault("package_version", doc.get("package_version"))
    return model.to(_device(device))


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        try:
            from ..devices import resolve_device

            return resolve_device("auto")
        except ImportError:  # pragma: no cover - devices module not present
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def list_pretrained() -> list[str]:
    """Names of the models shipped in ``core/models/pretrained/`` (``.safetensors`` + ``.json``)."""
    if not PRETRAINED_DIR.is_dir():
        return []
    return sorted(
        p.stem for p in PRETRAINED_DIR.glob("*.json")
        if p.with_suffix(".safetensors").is_file()
    )


def resolve_model(name_or_path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Load a shipped model by name (see :func:`list_pretrained`) or a checkpoint by path."""
    text = str(name_or_path)
    if text in list_pretrained():
        return load_model(PRETRAINED_DIR / text, device=device)
    p = Path(text).expanduser()
    _refuse_pickle(p)
    stem = _stem(p)
    if p.is_file() or stem.with_name(stem.name + ".json").is_file():
        return load_model(p, device=device)
    shipped = ", ".join(list_pretrained()) or "(none installed)"
    raise CheckpointError(
        f"no model {text!r}: not a shipped model name and no checkpoint at that path. "
        f"Shipped models: {shipped}; or pass the path of a <name>.safetensors/.json pair"
    )
