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
    from .feature_net import FeatureNet
    from .multiscale import MultiScaleNet
    from .patch_classifier import PatchClassifier
    from .unet import EncoderDecoder3D, UNet3D

    return {
        "patch_classifier": PatchClassifier,
        "unet": UNet3D,
        "encoder_decoder": EncoderDecoder3D,
        "multiscale": MultiScaleNet,
        "feature_net": FeatureNet,
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


#: Fresh-network settings for interactive fine-tuning on a CPU: a depth-2 valid U-Net whose top
#: level uses 1x3x3 convolutions and 1x2x2 pooling (a step takes 0.41 s on the bundled T1
#: against 6.2 s for the library default).
_SMALL_VALID_UNET: dict[str, Any] = {"depth": 2, "base_width": 16, "padding": "valid",
                                      "norm": "batch", "anisotropic_levels": 1}
_INTERACTIVE: dict[str, dict[str, Any]] = {
    "unet": _SMALL_VALID_UNET,
    "encoder_decoder": _SMALL_VALID_UNET,  # the same net without skip connections
}
#: the in-plane scales (voxels) of the fixed filters of a new task's ``feature_net``
FEATURE_SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)
#: a new task's ``feature_net``: independent per-voxel heads averaged and their width (an
#: ensemble steadier from round to round than one head of width 32; docs/training.md)
FEATURE_HEADS, FEATURE_WIDTH = 4, 8
#: the heads' width for a tissue map (more than two classes: several intensity bands to tell
#: apart; width 8 fell 0.028 Dice short of the RF on a 7-class map; docs/training.md)
TISSUE_MAP_WIDTH = 32
#: the family a new task starts with (GUI "New ...", ``cnnseg finetune`` without ``-m``)
NEW_TASK_FAMILY = "feature_net"


def interactive_config(name: str, spacing: tuple[float, float, float] | None = None,
                       num_classes: int | None = None) -> dict[str, Any]:
    """Settings (a fresh copy) for a *new* network of family ``name`` meant for interactive
    fine-tuning on the CPU; ``{}`` where the family's defaults already are.

    ``feature_net`` with the image's ``spacing`` (z, y, x): fixed filters at
    :data:`FEATURE_SCALES` in-plane voxels and the same physical width along the other axes
    (``features.scale_sigmas``), :data:`FEATURE_HEADS` per-voxel heads of :data:`FEATURE_WIDTH`
    channels, :data:`TISSUE_MAP_WIDTH` for a tissue map (``num_classes`` > 2; ``None``: one
    structure on a background; :func:`feature_width`), in-plane (1x3x3)
    context convolutions when z spacing >= 1.5x the in-plane one, else 3x3x3. This is the net
    docs/training.md measured for a new structure. Explicit settings given by the caller take
    precedence over these.
    """
    _check_name(name)
    if name == "feature_net" and spacing is not None:
        from .features import scale_sigmas

        sp = [float(v) for v in spacing]
        ratio = sp[0] / max(min(sp[1], sp[2]), 1e-9)
        return {"sigmas": scale_sigmas(sp, FEATURE_SCALES), "context_layers": 0,
                "heads": FEATURE_HEADS, "width": feature_width(num_classes),
                "context_kernel": "inplane" if ratio >= 1.5 else "3d"}
    return dict(_INTERACTIVE.get(name, {}))


def feature_width(num_classes: int | None) -> int:
    """Width of each head of a new task's ``feature_net`` for ``num_classes`` classes:
    :data:`TISSUE_MAP_WIDTH` for more than two (a tissue map; width 16 fell short of the RF on
    a 3- and a 7-class map), else :data:`FEATURE_WIDTH` (the net measured on the lesions)."""
    return TISSUE_MAP_WIDTH if int(num_classes or 2) > 2 else FEATURE_WIDTH
