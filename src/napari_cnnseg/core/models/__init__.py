"""Networks, dense conversion, registry and safe checkpoints.

Families (``build_model(name, **config)``):

* ``patch_classifier``: :class:`PatchClassifier` (central voxel of a patch) with an exact
  dense form (:func:`as_dense`, :meth:`PatchClassifier.to_dense`);
* ``unet`` / ``encoder_decoder``: :class:`UNet3D` (valid or same padding, skips on/off);
* ``multiscale``: :class:`MultiScaleNet` (DeepMedic-style pathways).

Every dense network follows the protocol described in :mod:`.base` (``output_shape``,
``valid_input_shape``, ``margin``, ``lattice``, ``padding``, ``get_config``, ``arch_name``).
Checkpoints are safetensors + JSON (:func:`save_model`, :func:`load_model`,
:func:`resolve_model`, :func:`list_pretrained`, :func:`model_meta`).
"""

from __future__ import annotations

from .base import SegNet
from .checkpoint import (
    PRETRAINED_DIR,
    list_pretrained,
    load_model,
    model_meta,
    resolve_model,
    save_model,
)
from .multiscale import MultiScaleNet
from .patch_classifier import (
    DensePatchClassifier,
    PatchClassifier,
    as_dense,
    classify_patches,
    valid_patch_sizes,
)
from .registry import architecture_names, build_model, default_config, interactive_config
from .transfer import adapt_head
from .unet import EncoderDecoder3D, UNet3D

__all__ = [
    "PRETRAINED_DIR",
    "DensePatchClassifier",
    "EncoderDecoder3D",
    "MultiScaleNet",
    "PatchClassifier",
    "SegNet",
    "UNet3D",
    "adapt_head",
    "architecture_names",
    "as_dense",
    "build_model",
    "classify_patches",
    "default_config",
    "interactive_config",
    "list_pretrained",
    "load_model",
    "model_meta",
    "resolve_model",
    "save_model",
    "valid_patch_sizes",
]
