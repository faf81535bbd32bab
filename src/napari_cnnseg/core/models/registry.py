"""Model registry: ``build_model(name, **config)`` over the architecture families.

Names: ``patch_classifier``, ``unet``, ``encoder_decoder``, ``multiscale``. Unknown names,
unknown config keys and bad values raise :class:`~napari_cnnseg.core.errors.InputError` with
the valid choices. ``build_model(m.arch_name, **m.get_config())`` rebuilds ``m``'s architecture.
"""

from __future__ import annotations

import functools
import inspect
import json
from typing import Any

from torch import nn

from ..errors import InputError


def _architectures() -> dict[str, type[nn.Module]]:
    from .multiscale import MultiScaleNet
    from .patch_classifier import PatchClassifier
    from .unet import EncoderDecoder3D, UNet3D

    return {
        "patch_classifier": PatchClassifier,
        "unet": UNet3D,
        "encoder_decoder": EncoderDecoder3D,
        "multiscale": MultiScaleNet,
    }


def architecture_names() -> list[str]:
    """Registered architecture names, in a stable order."""
    return list(_architectures())


def _check_name(name: str) -> type[nn.Module]:
    archs = _architectures()
    if name not in archs:
        raise InputError(
            f"unknown model architecture {name!r}; choose one of {', '.join(archs)}"
        )
    return archs[name]


@functools.cache
def _default_config_json(name: str) -> str:
    cls = _check_name(name)
    return json.dumps(cls().get_config())  # type: ignore[attr-defined]


def default_config(name: str) -> dict[str, Any]:
    """Default configuration (JSON-able, a fresh copy) of architecture ``name``."""
    return json.loads(_default_config_json(name))


def config_keys(name: str) -> list[str]:
    """Accepted configuration keys of architecture ``name``."""
    return list(default_config(name))


def build_model(name: str, **config: Any) -> nn.Module:
    """Build a fresh (randomly initialised) network of family ``name``.

    Args:
        name: ``patch_classifier``, ``unet``, ``encoder_decoder`` or ``multiscale``.
        **config: architecture options (see each class; ``cnnseg models`` lists defaults).
            JSON lists are accepted where tuples are expected.

    Returns:
        The module (train mode). Dense families follow the network protocol; a
        ``patch_classifier`` is converted with ``as_dense(model)``.

    Raises:
        InputError: unknown name, unknown key, or bad value (the message lists valid choices).
    """
    cls = _check_name(name)
    keys = config_keys(name)
    bad = [k for k in config if k not in keys]
    if bad:
        raise InputError(
            f"unknown option(s) {', '.join(map(repr, bad))} for model {name!r}; "
            f"valid options: {', '.join(keys)}"
        )
    try:
        return cls(**config)
    except TypeError as exc:  # wrong type slipped past the checks
        sig = inspect.signature(cls.__init__)
        raise InputError(f"bad configuration for model {name!r} ({exc}); signature {sig}") from None


#: Fresh-network settings for interactive fine-tuning on a CPU (GUI "New untrained ...",
#: ``cnnseg finetune -m unet``, ``benchmarks/bench_scribbles.py``): a depth-2 valid U-Net whose
#: top level uses 1x3x3 convolutions and 1x2x2 pooling. On the bundled T1 (2-core CPU, default
#: crops, batch 4) a step takes 0.41 s against 6.2 s for the library default (depth 3, 3x3x3
#: at full resolution), so a 20 s budget buys ~45 steps instead of ~3; the lower level is fully
#: 3D, so isotropic volumes work too. This is the net behind the figures in docs/training.md.
_SMALL_VALID_UNET: dict[str, Any] = {"depth": 2, "base_width": 16, "padding": "valid",
                                      "norm": "batch", "anisotropic_levels": 1}
_INTERACTIVE: dict[str, dict[str, Any]] = {
    "unet": _SMALL_VALID_UNET,
    "encoder_decoder": _SMALL_VALID_UNET,  # the same net without skip connections
}


def interactive_config(name: str) -> dict[str, Any]:
    """Settings (a fresh copy) for a *new* network of family ``name`` meant for interactive
    fine-tuning on the CPU; ``{}`` where the family's defaults already are (see ``_INTERACTIVE``).
    Explicit settings given by the caller take precedence over these.
    """
    _check_name(name)
    return dict(_INTERACTIVE.get(name, {}))
