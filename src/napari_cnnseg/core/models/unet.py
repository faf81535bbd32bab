"""3D U-Net and plain encoder-decoder (``skips=False``), valid or same padding.

Shape rules, per axis (Z, Y, X), with ``c = convs_per_level``, kernel ``k_l`` (3, or 1 on z for
the first ``anisotropic_levels`` levels) and pooling factor ``f_l`` (2, or 1 on z likewise):

* **valid**: each level's convolutions remove ``c * (k_l - 1)`` voxels; the size entering each
  pooling must be divisible by ``f_l``; the decoder multiplies by ``f_l`` (trilinear upsampling
  additionally drops ``f_l / 2`` border voxels per side, whose interpolation would need data
  outside the map), then removes ``c * (k_l - 1)``. Every intermediate size must stay >= 1.
  Skip connections are centre-cropped (the crop is always even, so exactly centred).
  ``output = input - 2 * margin`` with a constant ``margin``; valid inputs are spaced by
  ``lattice = prod(f_l)`` (e.g. 8 for depth 3), and tiles whose origins are multiples of
  ``lattice`` reproduce a one-pass prediction exactly.
* **same**: output = input; every input size must be divisible by ``prod(f_l)`` (``2**depth``
  on y/x).

With ``norm="instance"`` the bottleneck must keep at least 2 voxels per axis (instance
statistics over a single voxel are undefined); the rules above include that.

Example: ``UNet3D(depth=3, convs_per_level=2, padding="valid")`` maps 92^3 -> 4^3 (margin 44)
and 100^3 -> 12^3; ``padding="same"`` maps 64^3 -> 64^3.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import (
    NORMS,
    SegNet,
    Shape3,
    center_crop,
    check_choice,
    check_float,
    check_int,
    conv_block,
)

PADDINGS = ("valid", "same")
UPSAMPLINGS = ("transposed", "trilinear")


class _Level(nn.Sequential):
    """``convs`` conv blocks (+ optional Dropout3d)."""

    def __init__(
        self, in_ch: int, out_ch: int, convs: int, kernel: Shape3, same: bool, norm: str, dropout: float
    ) -> None:
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(conv_block(in_ch if i == 0 else out_ch, out_ch, kernel, same=same, norm=norm))
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        super().__init__(*layers)


class _Up(nn.Module):
    """Learned (transposed conv) or trilinear (+1^3 conv) upsampling by ``factor`` (z, y, x)."""

    def __init__(self, in_ch: int, out_ch: int, factor: Shape3, mode: str, valid: bool) -> None:
        super().__init__()
        self.factor = factor
        self.mode = mode
        # valid trilinear: drop the f/2 outermost voxels per side (clamped interpolation there)
        self.crop = tuple(f // 2 if (valid and mode == "trilinear") else 0 for f in factor)
        if mode == "transposed":
            self.conv = nn.ConvTranspose3d(in_ch, out_ch, factor, stride=factor)
        else:
            self.conv = nn.Conv3d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "transposed":
            return self.conv(x)
        x = F.interpolate(x, scale_factor=self.factor, mode="trilinear", align_corners=False)
        if any(self.crop):
            cz, cy, cx = self.crop
            x = x[:, :, cz : x.shape[2] - cz, cy : x.shape[3] - cy, cx : x.shape[4] - cx]
        return self.conv(x)


def _check_unet_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate :class:`UNet3D`'s settings (InputError naming the first bad one); returns them
    with the dropout as a float."""
    for name, low in (("in_channels", 1), ("num_classes", 1), ("depth", 1), ("base_width", 1),
                      ("convs_per_level", 1), ("anisotropic_levels", 0)):
        check_int(name, cfg[name], low)
    check_choice("padding", cfg["padding"], PADDINGS)
    check_choice("upsampling", cfg["upsampling"], UPSAMPLINGS)
    check_choice("norm", cfg["norm"], NORMS)
    if not isinstance(cfg["skips"], bool):
        raise InputError(f"skips must be True or False, got {cfg['skips']!r}")
    if cfg["anisotropic_levels"] > cfg["depth"]:
        raise InputError(f"anisotropic_levels={cfg['anisotropic_levels']} exceeds "
                         f"depth={cfg['depth']}; use 0..{cfg['depth']}")
    return {**cfg, "dropout": check_float("dropout", cfg["dropout"], 0.0, 1.0)}


class UNet3D(SegNet):
    """3D U-Net (Ronneberger / Cicek) or encoder-decoder with learned upsampling.

    Args:
        in_channels: image channels C.
        num_classes: output classes K (logits).
        depth: number of poolings (levels below the top); >= 1.
        base_width: channels at the top level; doubled at each level down.
        convs_per_level: 3^3 convolutions per level (encoder and decoder).
        padding: "valid" (exact tiling, output smaller than input) or "same".
        upsampling: "transposed" (learned, kernel = stride = factor) or "trilinear" (+ 1^3 conv).
        skips: U-Net skip connections (concatenation); False gives a plain encoder-decoder.
        norm: "batch" | "instance" | "group" | "none". Batch (eval) and none tile exactly.
        dropout: Dropout3d probability after every level (0 disables).
        anisotropic_levels: the first levels use 1x3x3 convolutions and 1x2x2 pooling (thick
            slices along z); 0 <= anisotropic_levels <= depth.

    Input (N, C, Z, Y, X) -> logits (N, K, *output_shape((Z, Y, X))); see the module docstring
    for the shape rules, ``margin`` and ``lattice``.
    """

    arch_name = "unet"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 3,
        base_width: int = 16,
        convs_per_level: int = 2,
        padding: str = "valid",
        upsampling: str = "transposed",
        skips: bool = True,
        norm: str = "batch",
        dropout: float = 0.0,
        anisotropic_levels: int = 0,
    ) -> None:
        super().__init__()
        self._config = _check_unet_config(dict(
            in_channels=in_channels, num_classes=num_classes, depth=depth, base_width=base_width,
            convs_per_level=convs_per_level, padding=padding, upsampling=upsampling,
            skips=skips, norm=norm, dropout=dropout, anisotropic_levels=anisotropic_levels))
        dropout = self._config["dropout"]
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.padding = padding
        same = padding == "same"
        # per level: kernel and pooling factor (z, y, x); the bottom level has no pooling
        self.kernels: list[Shape3] = [
            (1, 3, 3) if lvl < anisotropic_levels else (3, 3, 3) for lvl in range(depth + 1)
        ]
        self.factors: list[Shape3] = [
            (1, 2, 2) if lvl < anisotropic_levels else (2, 2, 2) for lvl in range(depth)
        ]
        widths = [base_width * 2**lvl for lvl in range(depth + 1)]
        self.skips = skips
        self.encoders = nn.ModuleList()
        self.pools = nn.ModuleList()
        ch = in_channels
        for lvl in range(depth + 1):
            self.encoders.append(
                _Level(ch, widths[lvl], convs_per_level, self.kernels[lvl], same, norm, dropout)
            )
            ch = widths[lvl]
            if lvl < depth:
                self.pools.append(nn.MaxPool3d(self.factors[lvl], self.factors[lvl]))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lvl in reversed(range(depth)):
            self.ups.append(_Up(widths[lvl + 1], widths[lvl], self.factors[lvl], upsampling, not same))
            dec_in = 2 * widths[lvl] if skips else widths[lvl]
            self.decoders.append(
                _Level(dec_in, widths[lvl], convs_per_level, self.kernels[lvl], same, norm, dropout)
            )
        self.head = nn.Conv3d(widths[0], num_classes, 1)
        self._rules = tuple(self._make_rule(axis) for axis in range(3))  # type: ignore[assignment]
        lattice = [1, 1, 1]
        for f in self.factors:
            lattice = [a * b for a, b in zip(lattice, f, strict=True)]
        self.lattice = tuple(lattice)  # type: ignore[assignment]

    def describe(self) -> str:
        return f"{'unet' if self.skips else 'encoder_decoder'} ({self.padding} padding)"

    def _make_rule(self, axis: int):
        depth = len(self.factors)
        c = self._config["convs_per_level"]
        ks = [k[axis] for k in self.kernels]
        fs = [f[axis] for f in self.factors]
        valid = self.padding == "valid"
        trilinear = self._config["upsampling"] == "trilinear"
        total = 1
        for f in fs:
            total *= f
        # instance norm needs more than one voxel per map: keep the bottleneck >= 2 voxels
        low = 2 if self._config["norm"] == "instance" else 1

        def rule(size: int) -> int | None:
            if size < 1:
                return None
            if not valid:
                return size if size % total == 0 and size // total >= low else None
            s = size
            for lvl in range(depth):
                s -= c * (ks[lvl] - 1)
                if s < 1 or s % fs[lvl]:
                    return None
                s //= fs[lvl]
            s -= c * (ks[depth] - 1)
            if s < low:
                return None
            for lvl in reversed(range(depth)):
                s *= fs[lvl]
                if trilinear:
                    s -= 2 * (fs[lvl] // 2)
                s -= c * (ks[lvl] - 1)
                if s < 1:
                    return None
            return s

        return rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> logits (N, K, Z', Y', X'); raises ShapeError on an invalid shape."""
        self.check_input(x)
        skips: list[torch.Tensor] = []
        depth = len(self.pools)
        for lvl in range(depth):
            x = self.encoders[lvl](x)
            if self.skips:  # without skips, do not keep encoder maps alive
                skips.append(x)
            x = self.pools[lvl](x)
        x = self.encoders[depth](x)
        for i, lvl in enumerate(reversed(range(depth))):
            x = self.ups[i](x)
            if self.skips:
                skip = skips[lvl]
                if skip.shape[2:] != x.shape[2:]:
                    skip = center_crop(skip, x.shape[2:])
                x = torch.cat([skip, x], dim=1)
            x = self.decoders[i](x)
        return self.head(x)


class EncoderDecoder3D(UNet3D):
    """Encoder-decoder with learned upsampling: a :class:`UNet3D` with ``skips=False``.

    Same arguments and shape rules as :class:`UNet3D` except ``skips`` (always False).
    """

    arch_name = "encoder_decoder"

    def __init__(self, **config: Any) -> None:
        if "skips" in config:
            raise InputError("encoder_decoder has no 'skips' option (it is a U-Net without skips)")
        super().__init__(skips=False, **config)
        self._config.pop("skips", None)
