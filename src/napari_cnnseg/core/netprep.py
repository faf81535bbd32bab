"""Networks as the inference engine sees them: shape rules, foreign modules, fast eval copies.

* :func:`network_spec` reads the network protocol (``docs/ARCHITECTURE.md``) of a model,
  converting a patch classifier to its dense form first.
* :func:`wrap_module` declares the shape rule of any other torch module (e.g. MONAI's UNet)
  so that :func:`~napari_cnnseg.core.inference.predict` accepts it.
* :func:`inference_copy` makes the fast evaluation copy that tiles run through: a deep copy in
  eval mode (the caller's model is never modified), eval-mode BatchNorm folded into the
  preceding convolution, on the CPU small stride-2 transposed convolutions rewritten as
  sub-pixel convolutions (both exact up to float rounding), ``channels_last_3d`` weights,
  moved to the device.
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .errors import InputError, ShapeError
from .models.base import as_shape3

log = logging.getLogger(__name__)

Shape3 = tuple[int, int, int]


def _shape3(value: Any, what: str) -> Shape3:
    return as_shape3(value, what, minimum=0)  # the one shape helper (core.models.base)


class WrappedNet(nn.Module):
    """A foreign module with a declared shape rule (the network protocol).

    Accepted input sizes per axis are multiples of ``divisor`` larger than ``2 * margin``;
    the output is ``input - 2 * margin`` (``margin`` = 0 for same padding).
    """

    arch_name = "wrapped"

    def __init__(self, module: nn.Module, num_classes: int, *, in_channels: int = 1,
                 padding: str = "same", divisor: Sequence[int] | int = (1, 1, 1),
                 margin: Sequence[int] | int = (0, 0, 0)) -> None:
        super().__init__()
        if padding not in ("same", "valid"):
            raise InputError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.module = module
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.padding = padding
        self.divisor = tuple(max(1, d) for d in _shape3(divisor, "divisor"))
        self.margin = _shape3(margin, "margin") if padding == "valid" else (0, 0, 0)
        self.lattice = self.divisor
        self.meta = dict(getattr(module, "meta", {}) or {})

    def _ok(self, size: int, axis: int) -> bool:
        return size % self.divisor[axis] == 0 and size > 2 * self.margin[axis]

    def valid_input_shape(self, min_shape: Sequence[int] | int = 1) -> Shape3:
        """Smallest accepted input (Z, Y, X) that is >= ``min_shape`` per axis."""
        out = []
        for axis, m in enumerate(_shape3(min_shape, "min_shape")):
            size = max(1, m, 2 * self.margin[axis] + 1)
            d = self.divisor[axis]
            out.append(-(-size // d) * d)
        return tuple(out)  # type: ignore[return-value]

    def output_shape(self, input_shape: Sequence[int]) -> Shape3:
        """Output (Z, Y, X) for an input (Z, Y, X); ShapeError names the nearest valid input."""
        shape = _shape3(input_shape, "input shape")
        if not all(self._ok(s, a) for a, s in enumerate(shape)):
            raise ShapeError(
                f"wrapped module cannot take input {shape}: pad it to "
                f"{self.valid_input_shape(shape)} (sizes must be multiples of {self.divisor})"
            )
        return tuple(s - 2 * m for s, m in zip(shape, self.margin, strict=True))  # type: ignore[return-value]

    def get_config(self) -> dict[str, Any]:
        return {"padding": self.padding, "divisor": list(self.divisor), "margin": list(self.margin)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def wrap_module(module: nn.Module, num_classes: int, *, in_channels: int = 1,
                padding: str = "same", divisor: Sequence[int] | int = (16, 16, 16),
                margin: Sequence[int] | int = (0, 0, 0)) -> WrappedNet:
    """Declare the shape rule of a foreign network so that ``predict`` can tile it.

    Args:
        module: any torch module mapping (N, C, Z, Y, X) -> logits (N, K, Z', Y', X').
        num_classes: K, the number of output channels (logits, softmax applied by predict).
        in_channels: C.
        padding: "same" (output = input) or "valid" (output = input - 2 * margin).
        divisor: input sizes per axis must be multiples of it (e.g. 2**levels for a U-Net).
        margin: voxels lost per side (valid padding only), (z, y, x).

    Example:
        >>> net = monai.networks.nets.UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2))
        >>> probs = predict(image, wrap_module(net, 2, divisor=8))
    """
    return WrappedNet(module, num_classes, in_channels=in_channels, padding=padding,
                      divisor=divisor, margin=margin)


@dataclass(frozen=True)
class NetSpec:
    """What the tiler needs to know about a network (read from the network protocol)."""

    net: nn.Module
    in_channels: int
    num_classes: int
    padding: str
    margin: Shape3
    lattice: Shape3

    def valid_input_shape(self, min_shape: Sequence[int]) -> Shape3:
        return tuple(int(v) for v in self.net.valid_input_shape(tuple(min_shape)))  # type: ignore

    def output_shape(self, input_shape: Sequence[int]) -> Shape3:
        return tuple(int(v) for v in self.net.output_shape(tuple(input_shape)))  # type: ignore


def _dense(model: nn.Module) -> nn.Module:
    if hasattr(model, "padding") and hasattr(model, "output_shape"):
        return model
    if hasattr(model, "to_dense"):
        dense = model.to_dense()
        if getattr(model, "meta", None) and not getattr(dense, "meta", None):
            dense.meta = model.meta
        return dense
    raise InputError(
        f"{type(model).__name__} does not declare its shape rule (padding, margin, output_shape, "
        "valid_input_shape); wrap it with napari_cnnseg.core.inference.wrap_module(module, "
        "num_classes, padding='same', divisor=...)"
    )


def _infer_lattice(net: nn.Module, base: Shape3) -> Shape3:
    """Spacing of valid input sizes after ``base`` (the pooling grid) when not declared."""
    nxt = net.valid_input_shape(tuple(b + 1 for b in base))
    return tuple(int(n) - int(b) for n, b in zip(nxt, base, strict=True))  # type: ignore[return-value]


def network_spec(model: nn.Module) -> NetSpec:
    """Read the shape protocol of a network (dense form for a patch classifier).

    Raises:
        InputError: the module declares no shape rule (use :func:`wrap_module`).
    """
    net = _dense(model)
    padding = str(getattr(net, "padding", "same"))
    if padding not in ("same", "valid"):
        raise InputError(f"network padding must be 'same' or 'valid', got {padding!r}")
    margin = tuple(int(m) for m in getattr(net, "margin", (0, 0, 0)))
    lattice = getattr(net, "lattice", None)
    if lattice is None:
        lattice = _infer_lattice(net, net.valid_input_shape((1, 1, 1)))
    return NetSpec(net, int(net.in_channels), int(net.num_classes), padding,
                   margin, tuple(max(1, int(p)) for p in lattice))  # type: ignore[arg-type]


# --- fast evaluation copy ------------------------------------------------------------------
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NOOPS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _leaves(seq: nn.Sequential) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, name, module) in execution order, descending into plain Sequentials."""
    out = []
    for name, child in seq.named_children():
        if _is_plain_sequential(child):
            out.extend(_leaves(child))
        else:
            out.append((seq, name, child))
    return out


def fold_batchnorm(model: nn.Module) -> int:
    """Fold eval-mode BatchNorm layers into the convolution right before them, in place.

    Only pairs that run back to back inside (nested) plain ``nn.Sequential`` containers are
    folded, so the conv output provably feeds nothing else; no-op layers in between
    (Identity, eval Dropout) are skipped; a conv module used at several places is left alone.
    Exact up to float rounding.

    Returns:
        The number of BatchNorm layers folded.
    """
    folded = 0
    uses: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        uses[id(m)] = uses.get(id(m), 0) + 1
    for module in list(model.modules()):
        if not _is_plain_sequential(module):
            continue
        prev = None
        for parent, name, leaf in _leaves(module):
            if isinstance(leaf, _NOOPS):
                continue
            if (prev is not None and isinstance(leaf, _BNS) and not leaf.training
                    and leaf.track_running_stats and leaf.running_mean is not None):
                p_parent, p_name, conv = prev
                fused = fuse_conv_bn_eval(conv, leaf, transpose=isinstance(conv, nn.modules.conv._ConvTransposeNd))
                setattr(p_parent, p_name, fused)
                setattr(parent, name, nn.Identity())
                folded += 1
                prev = None
                continue
            shared = uses.get(id(leaf), 0) > 1  # the same conv used elsewhere too
            prev = (parent, name, leaf) if isinstance(leaf, _CONVS) and not leaf.training and not shared else None
    return folded


class SubPixelConvTranspose3d(nn.Module):
    """``ConvTranspose3d(k=3, stride=2, padding=1, output_padding=1)`` as a sub-pixel convolution.

    Output voxel ``2j + a`` (per axis, phase ``a`` in {0, 1}) only sees input voxels ``j`` and
    ``j + 1``: phase 0 uses tap 1 of the kernel on ``x[j]``; phase 1 uses tap 2 on ``x[j]`` and
    tap 0 on ``x[j + 1]``. So the layer is a 2^3 convolution with ``8 * C_out`` outputs (one per
    phase) on the input padded by one voxel at the far end (zeros), followed by a 3D pixel shuffle.
    Same result up to float rounding; oneDNN runs it much faster when ``C_out`` is small (e.g.
    the last upsampling of a U-Net straight to class logits).
    """

    _TAPS = {0: {0: 1}, 1: {0: 2, 1: 0}}  # phase -> {input offset: kernel tap}

    def __init__(self, ct: nn.ConvTranspose3d) -> None:
        super().__init__()
        cin, cout = ct.in_channels, ct.out_channels
        self.out_channels = cout
        weight = ct.weight.detach()
        w = weight.new_zeros((2, 2, 2, cout, cin, 2, 2, 2))
        for pz, py, px in itertools.product((0, 1), repeat=3):
            for (oz, kz), (oy, ky), (ox, kx) in itertools.product(
                self._TAPS[pz].items(), self._TAPS[py].items(), self._TAPS[px].items()
            ):
                w[pz, py, px, :, :, oz, oy, ox] = weight[:, :, kz, ky, kx].t()
        # padding=1 pads both ends; output i then sees x[i - 1], x[i], so dropping output 0
        # leaves exactly "x[j], x[j + 1] with zero past the end" without a padded input copy
        self.conv = nn.Conv3d(cin, 8 * cout, 2, padding=1, bias=ct.bias is not None)
        self.conv.weight = nn.Parameter(w.reshape(8 * cout, cin, 2, 2, 2), requires_grad=False)
        if ct.bias is not None:
            self.conv.bias = nn.Parameter(ct.bias.detach().repeat(8), requires_grad=False)

    @staticmethod
    def applies_to(module: nn.Module, max_out_channels: int = 4) -> bool:
        return (type(module) is nn.ConvTranspose3d and module.groups == 1
                and tuple(module.kernel_size) == (3, 3, 3) and tuple(module.stride) == (2, 2, 2)
                and tuple(module.padding) == (1, 1, 1)
                and tuple(module.output_padding) == (1, 1, 1)
                and tuple(module.dilation) == (1, 1, 1) and module.padding_mode == "zeros"
                and module.out_channels <= max_out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)[:, :, 1:, 1:, 1:]
        n, _, z, yy, xx = y.shape
        y = y.view(n, 2, 2, 2, self.out_channels, z, yy, xx).permute(0, 4, 5, 1, 6, 2, 7, 3)
        return y.reshape(n, self.out_channels, 2 * z, 2 * yy, 2 * xx)


def rewrite_transposed_convs(model: nn.Module) -> int:
    """Replace small-output stride-2 transposed convs by :class:`SubPixelConvTranspose3d`, in place.

    Returns:
        The number of layers replaced.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if SubPixelConvTranspose3d.applies_to(child):
                setattr(parent, name, SubPixelConvTranspose3d(child))
                count += 1
    return count


def inference_copy(net: nn.Module, device: torch.device, dtype: torch.dtype | None = None,
                   channels_last: bool = True) -> nn.Module:
    """A fast evaluation copy of ``net`` on ``device``; ``net`` itself is left untouched.

    Args:
        net: the dense network.
        device: target device.
        dtype: None (float32 weights; reduced precision then comes from autocast) or a float
            dtype to cast the whole copy to.
        channels_last: store 5D weights as ``channels_last_3d`` (oneDNN / cuDNN fast path).
    """
    fast = copy.deepcopy(net).eval()
    for p in fast.parameters():
        p.requires_grad_(False)
    n = fold_batchnorm(fast)
    if n:
        log.debug("folded %d BatchNorm layer(s) into convolutions", n)
    if device.type == "cpu" and rewrite_transposed_convs(fast):
        log.debug("transposed convolutions to class logits run as sub-pixel convolutions")
    fast = fast.to(device)
    if dtype is not None:
        fast = fast.to(dtype)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last_3d)
    return fast
