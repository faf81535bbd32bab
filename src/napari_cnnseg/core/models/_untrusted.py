"""Reading checkpoint files as untrusted input: nothing large read, no code run, before checks.

The limits (:data:`LIMITS`): a sidecar of at most :data:`MAX_SIDECAR_BYTES` of JSON nested at
most :data:`MAX_JSON_DEPTH` deep (deeper nesting would exhaust Python's recursion), without
NaN/Infinity or numbers of more than :data:`MAX_NUMBER_DIGITS` digits; an architecture first
built on torch's ``meta`` device (no memory) and refused above :data:`MAX_PARAMETERS`
parameters; a safetensors header of at most :data:`MAX_SAFETENSORS_HEADER` bytes whose every
tensor has a known dtype and a byte range inside the file that matches its shape, so a header
claiming exabytes is refused before ``safetensors`` allocates anything. Pickles are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, InputError

PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
#: largest JSON sidecar read (a real one is a few kB)
MAX_SIDECAR_BYTES = 1 << 20
#: deepest nesting of lists/objects in a sidecar or safetensors header (a real one: 4)
MAX_JSON_DEPTH = 32
#: longest number literal (digits) in a sidecar or header
MAX_NUMBER_DIGITS = 30
#: largest safetensors JSON header (a real one: a few kB; safetensors' own cap is 100 MB)
MAX_SAFETENSORS_HEADER = 16 << 20
#: most parameters a checkpoint's architecture may have (4e8 float32 = 1.6 GB; the shipped
#: models have < 1e6)
MAX_PARAMETERS = 400_000_000
#: the limits, for documentation and messages
LIMITS = {
    "sidecar_bytes": MAX_SIDECAR_BYTES,
    "json_depth": MAX_JSON_DEPTH,
    "number_digits": MAX_NUMBER_DIGITS,
    "safetensors_header_bytes": MAX_SAFETENSORS_HEADER,
    "parameters": MAX_PARAMETERS,
}
#: safetensors dtype names -> bytes per element
_ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def refuse_pickle(p: Path) -> None:
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{p.name} is a pickle-based PyTorch file; loading it could run arbitrary code, so "
            "napari-cnnseg refuses it. Convert it once, in a Python session you trust: "
            "build the network with build_model(...), load_state_dict(torch.load(..., "
            "weights_only=True)), then save_model(path, model) to get .safetensors + .json"
        )


def json_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in JSON ``text`` (brackets inside strings ignored),
    computed without recursion."""
    import re

    import numpy as np

    stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
    b = np.frombuffer(stripped.encode("utf-8", "replace"), dtype=np.uint8)
    step = (np.isin(b, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(b, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(step).max()) if step.size else 0


def safe_json(text: str, where: str) -> Any:
    """``json.loads`` of untrusted text within :data:`LIMITS` (depth, number length, no NaN)."""
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{where} nests JSON {depth} levels deep (limit {MAX_JSON_DEPTH}: deeper nesting "
            "would exhaust the parser's recursion); it was not written by save_model, "
            "re-save the model with save_model"
        )

    def number(literal: str) -> Any:
        if len(literal.lstrip("-")) > MAX_NUMBER_DIGITS:
            raise CheckpointError(
                f"{where} holds a number of {len(literal)} characters (limit "
                f"{MAX_NUMBER_DIGITS}); re-save the model with save_model"
            )
        return float(literal) if any(c in literal for c in ".eE") else int(literal)

    def constant(name: str) -> Any:
        raise CheckpointError(f"{where} holds {name}, which is not valid JSON; re-save the model")

    try:
        return json.loads(text, parse_int=number, parse_float=number, parse_constant=constant)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise CheckpointError(f"{where} is not valid JSON ({str(exc)[:200]})") from None


def read_safetensors_header(p: Path) -> dict[str, Any]:
    """The tensor table of a safetensors file, checked against the file itself.

    Returns ``{name: (dtype, shape)}``. Refuses (CheckpointError) a file that is not
    safetensors, a header over :data:`MAX_SAFETENSORS_HEADER`, unknown dtypes, negative or
    non-integer sizes, and byte ranges that do not match the shapes or lie beyond the end of
    the file (a header claiming exabytes), before anything is allocated.
    """
    size = p.stat().st_size
    bad = (f"{p} is not a safetensors file (it may be a renamed pickle or truncated); "
           "save models with save_model(...)")
    with open(p, "rb") as f:
        head = f.read(9)
        if len(head) < 9 or head[8:9] != b"{":
            raise CheckpointError(bad)
        n = int.from_bytes(head[:8], "little")
        if n > MAX_SAFETENSORS_HEADER:
            raise CheckpointError(
                f"{p.name}: its safetensors header claims {n} bytes (limit "
                f"{MAX_SAFETENSORS_HEADER}; a real one is a few kB): damaged or not written by "
                "save_model; re-save the model"
            )
        if n > size - 8:
            raise CheckpointError(bad)
        f.seek(8)
        text = f.read(n).decode("utf-8", "replace")
    header = safe_json(text, f"{p.name} (safetensors header)")
    if not isinstance(header, dict):
        raise CheckpointError(bad)
    data_bytes = size - 8 - n
    table: dict[str, Any] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _ST_DTYPES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and len(shape) <= 8 and all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        if not ok:
            raise CheckpointError(f"{p.name}: tensor {str(name)[:80]!r} has a malformed header "
                                  "entry (dtype, shape, data_offsets); re-save the model")
        need = _ST_DTYPES[entry["dtype"]]
        for d in shape:
            need *= d
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes or end - begin != need:
            raise CheckpointError(
                f"{p.name}: tensor {str(name)[:80]!r} of shape {tuple(shape)} needs {need} bytes but "
                f"its header points at bytes {begin}..{end} of {data_bytes} in the file: damaged "
                "or truncated; save both files again with save_model"
            )
        table[str(name)] = (entry["dtype"], tuple(shape))
    return table


def build_checked(doc: dict[str, Any], sidecar: Path) -> nn.Module:
    """Build the sidecar's architecture, refusing absurd sizes before allocating weights."""
    from .registry import build_model

    arch, config = doc["arch"], doc.get("config", {})

    def build() -> nn.Module:
        try:
            return build_model(arch, **config)
        except (KeyError, InputError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
            raise CheckpointError(
                f"{sidecar}: cannot rebuild the architecture {str(arch)[:80]!r} "
                f"({str(exc)[:300]}); the file was not written by this napari-cnnseg's save_model"
            ) from None

    try:
        with torch.device("meta"):  # shapes only: no memory for the weights
            probe = build()
        count = sum(int(t.numel()) for t in probe.state_dict().values())
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - an architecture that cannot be built on "meta"
        count = None
    if count is not None and count > MAX_PARAMETERS:
        raise CheckpointError(
            f"{sidecar}: architecture {arch!r} with this config has {count:,} parameters (limit "
            f"{MAX_PARAMETERS:,}, {MAX_PARAMETERS * 4 / 1e9:.1f} GB as float32); refused "
            "before allocating it: the sidecar is damaged or not from save_model"
        )
    return build()



def check_tensor_table(table: dict[str, tuple[int, ...]], expected: dict[str, Any],
                       weights: Path, arch: str) -> None:
    """Tensor names and shapes (``{name: shape}``) must be exactly those of the architecture.

    Raises:
        CheckpointError: missing, unexpected or mis-shaped tensors (the first few named).
    """
    missing = sorted(set(expected) - set(table))
    extra = sorted(set(table) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{weights.name} does not fit architecture {arch!r}: missing tensors "
            f"{missing[:5]}, unexpected tensors {[e[:80] for e in extra[:5]]}"
        )
    bad = [n for n, shape in table.items() if tuple(shape) != tuple(expected[n].shape)]
    if bad:
        n = bad[0]
        raise CheckpointError(
            f"{weights.name}: tensor {n!r} has shape {tuple(table[n])} but the architecture "
            f"{arch!r} needs {tuple(expected[n].shape)} ({len(bad)} mismatched); save both "
            "files together with save_model"
        )
