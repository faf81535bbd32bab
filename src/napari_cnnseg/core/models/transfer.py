"""Transfer learning: a trained network's body with a new classification head.

``adapt_head(model, num_classes)`` returns a copy of a dense registry network (``unet``,
``encoder_decoder``, ``multiscale``) whose final 1x1x1 classification convolution has
``num_classes`` outputs. Every other weight (and batch-norm statistic) is copied unchanged
from the source; the new head is freshly initialised (PyTorch's default ``Conv3d`` init) for
*all* rows, background included: the source's background row means "not one of the source's
classes", which is not what background means in a new class set, so it is not kept even when
the class counts match. The copy's ``get_config()["num_classes"]`` is updated, so
``save_model`` / ``load_model`` round-trip it; ``meta`` keeps the source's normalisation and
spacing, with new ``class_names``.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import InputError


def _head_conv(model: nn.Module) -> tuple[str, nn.Conv3d]:
    """(state-dict prefix, module) of the final 1x1x1 classification conv, or InputError."""
    head = getattr(model, "head", None)
    prefix = "head"
    if isinstance(head, nn.Sequential) and len(head) > 0:
        prefix = f"head.{len(head) - 1}"
        head = head[-1]
    k = getattr(model, "num_classes", None)
    if (not isinstance(head, nn.Conv3d) or tuple(head.kernel_size) != (1, 1, 1)
            or head.out_channels != k):
        raise InputError(
            f"{type(model).__name__} has no final 1x1x1 classification convolution; "
            "adapt_head supports the dense families unet, encoder_decoder and multiscale "
            "(convert a patch classifier with as_dense and retrain instead)"
        )
    return prefix, head


def adapt_head(model: nn.Module, num_classes: int,
               class_names: list[str] | None = None) -> nn.Module:
    """Copy of ``model`` with a fresh ``num_classes``-output classification head.

    Args:
        model: a dense registry network (``arch_name``, ``get_config()``, ``head``); a dense
            patch classifier is not supported.
        num_classes: outputs of the new head (>= 1, background first).
        class_names: ``num_classes`` strings; default ``background``, ``class 1``, ...

    Returns:
        A new module (same device, dtype and train/eval mode as ``model``; ``model`` is
        untouched). Body weights are identical to the source's; the head is freshly
        initialised from torch's global RNG (seed it with ``torch.manual_seed``).

    Raises:
        InputError: ``num_classes`` < 1, wrong number of class names, or an unsupported model.
    """
    from .checkpoint import default_meta
    from .registry import build_model

    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if not hasattr(model, "arch_name") or not hasattr(model, "get_config"):
        raise InputError(
            f"{type(model).__name__} is not a napari-cnnseg network (no arch_name/get_config); "
            "load it with load_model / resolve_model"
        )
    prefix, _ = _head_conv(model)
    if class_names is None:
        class_names = default_meta(num_classes)["class_names"]
    class_names = list(class_names)
    if len(class_names) != num_classes or not all(isinstance(n, str) for n in class_names):
        raise InputError(f"class_names must be {num_classes} strings (background first), "
                         f"got {class_names!r}")
    config: dict[str, Any] = dict(model.get_config())
    config["num_classes"] = num_classes
    new = build_model(model.arch_name, **config)
    new_prefix, new_head = _head_conv(new)
    if new_prefix != prefix:  # pragma: no cover - same architecture, same layout
        raise InputError(f"rebuilt {model.arch_name} has a different head layout")
    state = model.state_dict()
    head_keys = {f"{prefix}.weight", f"{prefix}.bias"}
    body = {n: t for n, t in state.items() if n not in head_keys}
    missing, unexpected = new.load_state_dict(body, strict=False)
    if unexpected or set(missing) != (head_keys & set(new.state_dict())):
        raise InputError(f"cannot transfer the body of {model.arch_name}: missing {missing}, "
                         f"unexpected {unexpected}")
    p = next(iter(model.parameters()), None)
    if p is not None:
        new.to(device=p.device, dtype=p.dtype)
    new.train(model.training)
    meta = copy.deepcopy(dict(getattr(model, "meta", None) or {}))
    meta["class_names"] = class_names
    src = meta.get("description") or ""
    meta["description"] = (f"{src} [body transferred, new {num_classes}-class head]").strip()
    new.meta = meta
    return new
