"""Safe checkpoints: safetensors weights + a JSON sidecar; never pickle.

``save_model("runs/liver", model, class_names=[...])`` writes ``runs/liver.safetensors``
(tensors only: loading one cannot execute code) and ``runs/liver.json``::

    {"format": "napari-cnnseg-model", "format_version": 1, "package_version": "0.1.0",
     "arch": "unet", "config": {...}, "weights_sha256": "...",
     "meta": {"class_names": [...], "normalization": {...}, "spacing": [z, y, x], ...}}

Both files are written completely under temporary names in the same folder (fsync-ed), then
moved into place with ``os.replace``, weights first: a process killed at any point leaves the
previous pair, or new weights whose new sidecar waits beside them, which the next
``load_model`` / ``save_model`` moves into place (``tests/test_crash.py`` kills real
``cnnseg finetune`` processes to check it).
``load_model`` refuses ``.pt/.pth/.ckpt/.pkl`` pickles (``torch.load`` is never called).

Checkpoints are untrusted input: ``load_model`` reads nothing large and runs no code before it
has checked them against fixed limits (see :data:`LIMITS`): the sidecar is at most
:data:`MAX_SIDECAR_BYTES` of JSON nested at most :data:`MAX_JSON_DEPTH` deep (deeper nesting
would exhaust Python's recursion), without NaN/Infinity or numbers of more than
:data:`MAX_NUMBER_DIGITS` digits; the architecture is first built on torch's ``meta`` device
(no memory) and refused above :data:`MAX_PARAMETERS` parameters; the safetensors header is at
most :data:`MAX_SAFETENSORS_HEADER` bytes and every tensor it lists must have a known dtype,
the shape the architecture needs and a byte range inside the file, so a header claiming
exabytes or other shapes is refused before ``safetensors`` allocates anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from ..normalization import DEFAULT_NORMALIZATION
from ._untrusted import (  # noqa: F401 - the limits are documented from here too
    LIMITS,
    MAX_JSON_DEPTH,
    MAX_PARAMETERS,
    MAX_SIDECAR_BYTES,
    PICKLE_SUFFIXES,
    build_checked,
    check_tensor_table,
    json_depth,
    read_safetensors_header,
    refuse_pickle,
    safe_json,
)

log = logging.getLogger(__name__)

FORMAT = "napari-cnnseg-model"
FORMAT_VERSION = 1
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _recover_pair(weights: Path, sidecar: Path) -> bool:
    """Complete a :func:`save_model` that was killed between moving the weights and the sidecar.

    Then the weights are new, the sidecar is old (its checksum differs) and the new sidecar
    waits complete under its temporary name beside it: it is moved into place. Returns True
    when it did so. Anything else is left as it is (``load_model`` then reports the mismatch).
    """
    if not (weights.is_file() and sidecar.is_file()):
        return False
    try:
        old = json.loads(sidecar.read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
    digest = _sha256(weights)
    if old == digest:
        return False
    for cand in sorted(sidecar.parent.glob(f".{sidecar.name}.*.tmp*")):
        try:
            if cand.stat().st_size > MAX_SIDECAR_BYTES:
                continue
            text = cand.read_text(encoding="utf-8")
            if json_depth(text) > MAX_JSON_DEPTH or json.loads(text).get("weights_sha256") != digest:
                continue
            os.replace(cand, sidecar)
        except (OSError, ValueError, AttributeError, RecursionError):
            continue
        log.warning("completed the interrupted save of %s (its new sidecar was waiting as %s)",
                    sidecar.name, cand.name)
        return True
    return False


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
    from ..io._atomic import _temp_sibling

    w_tmp = s_tmp = None
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        _recover_pair(weights, sidecar)  # finish a save a killed process left half done
        # both files complete on disk (temporary names, fsync-ed) before either is moved, the
        # weights first: killed at any point, the pair under the final names is the old one,
        # or new weights + the new sidecar still waiting beside them (_recover_pair)
        w_tmp, s_tmp = _temp_sibling(weights), _temp_sibling(sidecar)
        save_file(tensors, str(w_tmp), metadata={"format": FORMAT})
        _fsync(w_tmp)
        doc = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": _package_version(),
            "arch": net.arch_name,
            "config": net.get_config(),
            "meta": full,
            "weights": weights.name,
            "weights_sha256": _sha256(w_tmp),
        }
        s_tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        _fsync(s_tmp)
        os.replace(w_tmp, weights)
        os.replace(s_tmp, sidecar)
    except OSError as exc:
        blocker = next((q for q in weights.parents if q.exists() and not q.is_dir()), None)
        if blocker is not None:
            raise CheckpointError(
                f"cannot write the model to {weights}: {blocker} is a file, not a folder; "
                "choose another path"
            ) from exc
        raise CheckpointError(
            f"cannot write the model to {weights} ({exc.strerror or exc}); choose a writable "
            "folder with free space"
        ) from exc
    finally:
        for tmp in (w_tmp, s_tmp):
            if tmp is not None and os.path.lexists(tmp):
                os.unlink(tmp)
    log.info("saved model %s (%s) to %s", net.arch_name, weights.name, stem.parent)
    return weights


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

    p = Path(path).expanduser()
    refuse_pickle(p)
    stem = _stem(p)
    weights = stem.with_name(stem.name + ".safetensors")
    sidecar = stem.with_name(stem.name + ".json")
    for f, what in ((sidecar, "JSON sidecar"), (weights, "weights")):
        if not f.is_file():
            raise CheckpointError(
                f"model {what} {f} not found; a model is a pair <name>.safetensors + "
                "<name>.json written by save_model"
            )
    doc = _read_sidecar(sidecar)
    table = read_safetensors_header(weights)
    digest = doc.get("weights_sha256")
    if digest and digest != _sha256(weights) and _recover_pair(weights, sidecar):
        return load_model(path, device=device)  # a killed save_model, now completed
    if digest and digest != _sha256(weights):
        raise CheckpointError(
            f"{weights.name} does not match its sidecar {sidecar.name} (checksum differs); "
            "save both files together with save_model"
        )
    model = build_checked(doc, sidecar)
    expected = model.state_dict()
    check_tensor_table({n: shape for n, (_, shape) in table.items()}, expected, weights,
                       doc["arch"])
    try:
        tensors = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights} ({exc})") from None
    check_tensor_table({n: tuple(t.shape) for n, t in tensors.items()}, expected, weights,
                       doc["arch"])
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied into the parameter
        raise CheckpointError(f"{weights.name} does not fit {doc['arch']!r} ({str(exc)[:300]})") from None
    model.eval()
    meta = doc.get("meta")
    model.meta = dict(meta) if isinstance(meta, dict) else {}
    model.meta.setdefault("package_version", doc.get("package_version"))
    return model.to(_device(device))


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    """The sidecar's JSON document, checked: size, text, format and version, arch/config/meta
    types."""
    if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
        raise CheckpointError(
            f"{sidecar} is {sidecar.stat().st_size} bytes (limit {MAX_SIDECAR_BYTES}; a model "
            "sidecar is a few kB): not a napari-cnnseg model sidecar"
        )
    try:
        text = sidecar.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{sidecar} is not valid JSON text ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {sidecar} ({exc.strerror or exc})") from None
    doc = safe_json(text, str(sidecar))
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{sidecar} is not a napari-cnnseg model sidecar")
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{sidecar}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{sidecar} uses checkpoint format {doc.get('format_version')}, newer than this "
            f"napari-cnnseg ({FORMAT_VERSION}); upgrade napari-cnnseg"
        )
    if not isinstance(doc.get("arch"), str) or not isinstance(doc.get("config", {}), dict):
        raise CheckpointError(f"{sidecar}: 'arch' must be a name and 'config' a JSON object")
    meta = doc.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise CheckpointError(f"{sidecar}: 'meta' must be a JSON object, got {type(meta).__name__}")
    return doc


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
    refuse_pickle(p)
    stem = _stem(p)
    if p.is_file() or stem.with_name(stem.name + ".json").is_file():
        return load_model(p, device=device)
    shipped = ", ".join(list_pretrained()) or "(none installed)"
    raise CheckpointError(
        f"no model {text!r}: not a shipped model name and no checkpoint at that path. "
        f"Shipped models: {shipped}; or pass the path of a <name>.safetensors/.json pair"
    )
