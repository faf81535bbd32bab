"""Multi-scale network in the style of DeepMedic (Kamnitsas et al. 2017), fully convolutional.

A normal-resolution pathway and one pathway per downsampling factor ``f`` (default 3) each
apply ``L = len(widths)`` valid 3^3 convolutions. A low-resolution pathway sees the input
centre-cropped and average-pooled by ``f`` (a context ``f`` times wider); its output is
upsampled by repetition (nearest) so that each low-resolution voxel covers exactly the ``f``^3
output voxels of its pooling block. The pathways are concatenated and classified by 1^3
convolutions. The output is a dense response map, not a single voxel.

Shape and alignment rules, per axis (Z, Y, X), with ``F = lcm(factors)``:

* ``margin = max(L, max_f(f * L + (f - 1) // 2))`` (factors must be odd);
* an input ``S`` is accepted iff ``O = S - 2 * margin`` is a positive multiple of ``F``;
  the output has ``O`` voxels and output voxel ``i`` sits on input voxel ``i + margin``;
* pathway ``f`` crops ``margin - f * L`` voxels per side, so its pooling blocks start at
  input offsets ``margin - f * L + f * q``; the output is therefore made of whole blocks;
* ``lattice = (F, F, F)``: the pooling grid moves with the tile origin, so tiles must start at
  multiples of ``F`` from each other. Since every valid output size is a multiple of ``F``,
  stepping tiles by their output size keeps the origins on the lattice and tiling is exact.

Example: defaults (``widths`` of length 4, ``factors=(3,)``): margin 13, lattice 3,
smallest input 29^3 -> 3^3; 62^3 -> 36^3.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .base import (
    NORMS,
    SegNet,
    check_choice,
    check_float,
    check_int,
    check_int_tuple,
    check_widths,
    conv_block,
)

UPSAMPLINGS = ("nearest",)


class _Pathway(nn.Module):
    """Centre crop -> (average pool by f) -> L valid 3^3 conv blocks -> (repeat by f)."""

    def __init__(
        self, in_ch: int, widths: Sequence[int], factor: int, crop: int, norm: str, dropout: float
    ) -> None:
        super().__init__()
        self.factor = factor
        self.crop = crop
        layers: list[nn.Module] = []
        ch = in_ch
        for w in widths:
            layers.append(conv_block(ch, w, (3, 3, 3), same=False, norm=norm))
            ch = w
        if dropout > 0:
            layers.append(nn.Dropout3d(dropout))
        self.convs = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.crop
        if c:
            x = x[:, :, c : x.shape[2] - c, c : x.shape[3] - c, c : x.shape[4] - c]
        f = self.factor
        if f > 1:
            x = F.avg_pool3d(x, f, f)
        x = self.convs(x)
        if f > 1:
            x = F.interpolate(x, scale_factor=f, mode="nearest")
        return x


class MultiScaleNet(SegNet):
    """DeepMedic-style multi-pathway network (valid padding, exact tiling on its lattice).

    Args:
        in_channels: image channels C.
        num_classes: classes K.
        widths: channels of the L valid 3^3 convolutions of each pathway.
        factors: downsampling factors of the low-resolution pathways (odd integers > 1,
            e.g. ``(3,)`` or ``(3, 9)``); empty for a single-scale net.
        head_widths: hidden widths of the 1^3-convolution classifier after fusion.
        norm: "batch" | "instance" | "group" | "none" after each 3^3 convolution.
        dropout: Dropout3d probability at the end of each pathway and in the head.
        upsampling: "nearest" (repetition, as in DeepMedic).

    Input (N, C, Z, Y, X) -> logits (N, K, *output_shape((Z, Y, X))): see the module
    docstring for ``margin``, ``lattice`` and the accepted sizes.
    """

    arch_name = "multiscale"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (16, 16, 32, 32),
        factors: Sequence[int] = (3,),
        head_widths: Sequence[int] = (64,),
        norm: str = "batch",
        dropout: float = 0.0,
        upsampling: str = "nearest",
    ) -> None:
        super().__init__()
        check_int("in_channels", in_channels, 1)
        check_int("num_classes", num_classes, 1)
        widths = check_widths("widths", widths, nonempty=True)
        factors = check_int_tuple("factors", factors)
        head_widths = check_widths("head_widths", head_widths)
        check_choice("norm", norm, NORMS)
        check_choice("upsampling", upsampling, UPSAMPLINGS)
        dropout = check_float("dropout", dropout, 0.0, 1.0)
        if any(f < 3 or f % 2 == 0 for f in factors) or len(set(factors)) != len(factors):
            raise InputError(
                f"factors must be distinct odd integers >= 3 (e.g. [3] or [3, 9]), got {list(factors)}"
            )
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.padding = "valid"
        self._config = dict(
            in_channels=in_channels,
            num_classes=num_classes,
            widths=list(widths),
            factors=list(factors),
            head_widths=list(head_widths),
            norm=norm,
            dropout=dropout,
            upsampling=upsampling,
        )
        n_convs = len(widths)
        margin = max([n_convs] + [f * n_convs + (f - 1) // 2 for f in factors])
        step = math.lcm(*factors) if factors else 1
        self._margin = margin
        self.lattice = (step, step, step)
        self.pathways = nn.ModuleList(
            _Pathway(in_channels, widths, f, margin - f * n_convs, norm, dropout)
            for f in (1, *factors)
        )
        head: list[nn.Module] = []
        ch = widths[-1] * (1 + len(factors))
        for w in head_widths:
            head += [nn.Conv3d(ch, w, 1), nn.ReLU(inplace=True)]
            if dropout > 0:
                head.append(nn.Dropout3d(dropout))
            ch = w
        head.append(nn.Conv3d(ch, num_classes, 1))
        self.head = nn.Sequential(*head)

        def rule(size: int) -> int | None:
            out = size - 2 * margin
            return out if out >= 1 and out % step == 0 else None

        self._rules = (rule, rule, rule)  # type: ignore[assignment]

    def describe(self) -> str:
        return f"multiscale (factors {self._config['factors']}, valid padding)"

    def get_config(self) -> dict[str, Any]:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> logits (N, K, Z-2m, Y-2m, X-2m); raises ShapeError on bad sizes."""
        self.check_input(x)
        return self.head(torch.cat([p(x) for p in self.pathways], dim=1))
