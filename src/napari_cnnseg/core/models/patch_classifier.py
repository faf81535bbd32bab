"""Central-voxel patch classifier and its exact dense ("a trous") form.

A :class:`PatchClassifier` takes a cubic patch (N, C, p, p, p) and returns the class scores
(N, K) of its central voxel: valid 3^3 convolutions (+ norm + ReLU), max-pooling after the
convolutions listed in ``pool_after``, and fully connected layers.

:meth:`PatchClassifier.to_dense` returns a :class:`DensePatchClassifier` with the same
weights that classifies *every* voxel in one pass: each pooling of stride ``s`` becomes
stride 1, and every later layer (convolution, pooling, FC-as-convolution) has its dilation
multiplied by the accumulated stride ``j``. The first FC layer becomes a convolution whose
kernel is the feature-map size ``n`` at the FC input, dilated by ``j``. For an input
(N, C, D, H, W) the output is (N, K, D-p+1, H-p+1, W-p+1) and
``dense(x)[..., z, y, x] == model(x[..., z:z+p, y:y+p, x:x+p])`` up to float rounding.

Patch-size rule: the patch must be used entirely (no voxel dropped by a pooling), so each
pooling input ``m`` satisfies ``(m - pool_kernel) % pool_size == 0``; with the default
overlapping 3^3 pooling of stride 2 the receptive field stays odd and centred on the
classified voxel. An incompatible ``patch_size`` raises InputError naming the nearest valid
sizes; :func:`valid_patch_sizes` lists them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError, ShapeError
from .base import (
    NORMS,
    SegNet,
    check_choice,
    check_float,
    check_int,
    check_int_tuple,
    check_widths,
    make_norm,
)


def _feature_size(
    patch_size: int, n_convs: int, pool_after: Sequence[int], kernel: int, stride: int
) -> int | None:
    """Spatial size at the FC input, or None if some pooling would drop voxels / size < 1."""
    m = patch_size
    for i in range(1, n_convs + 1):
        m -= 2
        if m < 1:
            return None
        for _ in range(list(pool_after).count(i)):
            if m < kernel or (m - kernel) % stride:
                return None
            m = (m - kernel) // stride + 1
    return m


def valid_patch_sizes(
    widths: Sequence[int] = (16, 16, 32, 32),
    pool_after: Sequence[int] = (1, 3),
    pool_size: int = 2,
    pool_kernel: int = 3,
    limit: int = 129,
) -> list[int]:
    """Odd patch sizes up to ``limit`` that the given layout uses without dropping voxels."""
    return [
        p for p in range(1, limit + 1, 2)
        if _feature_size(p, len(widths), pool_after, pool_kernel, pool_size) is not None
    ]


def _check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate :class:`PatchClassifier`'s settings (InputError naming the first bad one and,
    for a patch size that does not fit, the nearest ones that do); returns them normalised
    (lists, sorted ``pool_after``, float dropout)."""
    for name in ("in_channels", "num_classes", "patch_size", "pool_size", "pool_kernel"):
        check_int(name, cfg[name], 1)
    widths = check_widths("widths", cfg["widths"], nonempty=True)
    pool_after = tuple(sorted(check_int_tuple("pool_after", cfg["pool_after"])))
    fc_widths = check_widths("fc_widths", cfg["fc_widths"])
    check_choice("norm", cfg["norm"], NORMS)
    dropout = check_float("dropout", cfg["dropout"], 0.0, 1.0)
    patch_size, pool_size, pool_kernel = cfg["patch_size"], cfg["pool_size"], cfg["pool_kernel"]
    if any(not 1 <= i <= len(widths) for i in pool_after):
        raise InputError(
            f"pool_after entries must be convolution indices 1..{len(widths)}, got {pool_after!r}"
        )
    if pool_kernel % 2 == 0 or pool_kernel < pool_size:
        raise InputError(
            f"pool_kernel must be odd and >= pool_size ({pool_size}) so the receptive field "
            f"stays centred, got {pool_kernel}"
        )
    n = _feature_size(patch_size, len(widths), pool_after, pool_kernel, pool_size)
    if n is None or patch_size % 2 == 0:
        sizes = valid_patch_sizes(widths, pool_after, pool_size, pool_kernel, limit=4 * patch_size + 64)
        near = sorted(sizes, key=lambda q: (abs(q - patch_size), q))[:2]
        why = (
            "it must be odd (a central voxel)" if patch_size % 2 == 0
            else "a pooling would drop voxels or the map would vanish"
        )
        raise InputError(
            f"patch_size={patch_size} does not fit {len(widths)} convolutions with pooling "
            f"after {list(pool_after)} (kernel {pool_kernel}, stride {pool_size}): {why}; "
            f"nearest valid patch sizes: "
            f"{', '.join(map(str, sorted(near))) or 'none (use fewer poolings)'}"
        )
    return {**cfg, "widths": list(widths), "pool_after": list(pool_after),
            "fc_widths": list(fc_widths), "dropout": dropout}


class PatchClassifier(nn.Module):
    """Classify the central voxel of a cubic patch.

    Args:
        in_channels: image channels C.
        num_classes: classes K.
        patch_size: odd patch side p (voxels, same on z, y, x).
        widths: output channels of the successive 3^3 valid convolutions.
        pool_after: 1-based indices of the convolutions followed by a max-pooling
            (e.g. ``(1, 3)``: conv, pool, conv, conv, pool, conv); empty for no pooling.
        pool_size: pooling stride s (the factor by which maps shrink).
        pool_kernel: pooling window (odd, >= pool_size; 3 = overlapping pooling).
        fc_widths: hidden widths of the fully connected head (before the K scores).
        norm: "batch" | "instance" | "group" | "none" after each convolution.
        dropout: dropout probability before each FC layer (0 disables).

    Input (N, C, p, p, p) -> scores (N, K). For whole volumes use :meth:`to_dense`.
    """

    arch_name = "patch_classifier"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        patch_size: int = 25,
        widths: Sequence[int] = (16, 16, 32, 32),
        pool_after: Sequence[int] = (1, 3),
        pool_size: int = 2,
        pool_kernel: int = 3,
        fc_widths: Sequence[int] = (128,),
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cfg = _check_config(dict(
            in_channels=in_channels, num_classes=num_classes, patch_size=patch_size,
            widths=widths, pool_after=pool_after, pool_size=pool_size, pool_kernel=pool_kernel,
            fc_widths=fc_widths, norm=norm, dropout=dropout))
        widths, pool_after, fc_widths = cfg["widths"], tuple(cfg["pool_after"]), cfg["fc_widths"]
        dropout, n = cfg["dropout"], _feature_size(patch_size, len(widths), pool_after,
                                                   pool_kernel, pool_size)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.patch_size = patch_size
        self.feature_size = n
        self._config = cfg
        layers: list[nn.Module] = []
        ch = in_channels
        for i, w in enumerate(widths, start=1):
            layers += [nn.Conv3d(ch, w, 3, bias=(norm == "none")), make_norm(norm, w), nn.ReLU(inplace=True)]
            ch = w
            for _ in range(pool_after.count(i)):
                layers.append(nn.MaxPool3d(pool_kernel, pool_size))
        self.features = nn.Sequential(*layers)
        head: list[nn.Module] = []
        fan_in = ch * n**3
        for w in fc_widths:
            if dropout > 0:
                head.append(nn.Dropout(dropout))
            head += [nn.Linear(fan_in, w), nn.ReLU(inplace=True)]
            fan_in = w
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(fan_in, num_classes))
        self.head = nn.Sequential(*head)

    def get_config(self) -> dict[str, Any]:
        """JSON-able configuration; ``build_model("patch_classifier", **config)`` rebuilds it."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self._config.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, p, p, p) patches -> (N, K) scores of their central voxels."""
        p = self.patch_size
        if x.ndim != 5 or tuple(x.shape[1:]) != (self.in_channels, p, p, p):
            raise ShapeError(
                f"patch_classifier expects patches (N, {self.in_channels}, {p}, {p}, {p}), got "
                f"{tuple(x.shape)}; to segment a volume use as_dense(model) (or model.to_dense())"
            )
        return self.head(torch.flatten(self.features(x), 1))

    def to_dense(self) -> DensePatchClassifier:
        """Exact fully convolutional copy (same weights, same train/eval mode, same device).

        Built once per version of the weights: the copy is kept until a parameter or buffer
        changes (an optimiser step, ``load_state_dict``, a move to another device), so the
        several callers of one Segment click (description, tile policy, prediction) share it.
        Treat it as read-only (``core.netprep`` makes its own fast copy).
        """
        key = (tuple((t.data_ptr(), t._version, str(t.device), t.dtype)
                     for t in (*self.parameters(), *self.buffers())),
               self.get_config().__repr__())
        cached = self.__dict__.get("_dense_cache")
        if cached is not None and cached[0] == key:
            if getattr(self, "meta", None) is not None:  # meta may change without the weights
                cached[1].meta = dict(self.meta)
            return cached[1].train(self.training)
        dense = DensePatchClassifier(self)
        self.__dict__["_dense_cache"] = (key, dense)
        return dense.train(self.training)


class DilatedMaxPool3d(nn.Module):
    """Stride-1 max-pooling with a dilated cubic window, computed separably (z, y, x).

    Equals ``nn.MaxPool3d(kernel, stride=1, dilation=dilation)`` exactly (max is separable)
    and keeps ``channels_last_3d`` tensors in that layout; faster on CPU.
    """

    def __init__(self, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel = int(kernel)
        self.dilation = int(dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, j = self.kernel, self.dilation
        if k == 1:
            return x
        for axis in (2, 3, 4):
            n = x.shape[axis] - (k - 1) * j
            out = torch.maximum(x.narrow(axis, 0, n), x.narrow(axis, j, n))
            for i in range(2, k):
                if out.requires_grad:
                    out = torch.maximum(out, x.narrow(axis, i * j, n))
                else:  # inference: update in place, one allocation per axis
                    torch.maximum(out, x.narrow(axis, i * j, n), out=out)
            x = out
        return x

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride=1, dilation={self.dilation}"


class DensePatchClassifier(SegNet):
    """Fully convolutional ("a trous") form of a :class:`PatchClassifier`.

    Follows the network protocol: ``padding="valid"``, ``margin = ((p-1)//2,) * 3``,
    ``lattice = (1, 1, 1)`` (no pooling grid: exactly shift-equivariant), input
    (N, C, Z, Y, X) with every side >= p -> logits (N, K, Z-p+1, Y-p+1, X-p+1).
    ``arch_name``/``get_config()`` are those of the patch classifier (checkpoints store it);
    :meth:`to_patch_classifier` maps the (possibly fine-tuned) weights back.
    """

    arch_name = "patch_classifier"
    padding = "valid"

    def __init__(self, source: PatchClassifier) -> None:
        super().__init__()
        cfg = source.get_config()
        self._config = cfg
        self.in_channels = source.in_channels
        self.num_classes = source.num_classes
        self.patch_size = p = source.patch_size
        self._rules = (lambda s: s - p + 1 if s >= p else None,) * 3  # type: ignore[assignment]
        self.lattice = (1, 1, 1)
        if getattr(source, "meta", None) is not None:
            self.meta = dict(source.meta)
        layers: list[nn.Module] = []
        j = 1  # accumulated stride
        for mod in source.features:
            if isinstance(mod, nn.Conv3d):
                conv = nn.Conv3d(mod.in_channels, mod.out_channels, 3, dilation=j, bias=mod.bias is not None)
                conv.load_state_dict(mod.state_dict())
                layers.append(conv)
            elif isinstance(mod, nn.MaxPool3d):
                layers.append(DilatedMaxPool3d(int(mod.kernel_size), j))
                j *= int(cfg["pool_size"])
            elif isinstance(mod, nn.ReLU):
                layers.append(nn.ReLU(inplace=True))
            else:  # norm layers are per channel: same module works densely (eval mode)
                layers.append(copy.deepcopy(mod))
        n = source.feature_size
        first = True
        for mod in source.head:
            if isinstance(mod, nn.Linear):
                ch = mod.in_features // n**3 if first else mod.in_features
                k = n if first else 1
                conv = nn.Conv3d(ch, mod.out_features, k, dilation=j if first else 1)
                with torch.no_grad():
                    conv.weight.copy_(mod.weight.reshape(conv.weight.shape))
                    conv.bias.copy_(mod.bias)
                layers.append(conv)
                first = False
            elif isinstance(mod, nn.Dropout):
                layers.append(nn.Dropout(mod.p))
            else:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)
        ref = next(source.parameters())
        self.to(device=ref.device, dtype=ref.dtype)

    def describe(self) -> str:
        return f"dense patch_classifier (patch {self.patch_size}, valid padding)"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, Z, Y, X) -> logits (N, K, Z-p+1, Y-p+1, X-p+1)."""
        self.check_input(x)
        return self.net(x)

    def to_patch_classifier(self) -> PatchClassifier:
        """A :class:`PatchClassifier` with this module's (possibly fine-tuned) weights."""
        model = PatchClassifier(**self._config)
        src = [m for m in self.net if any(True for _ in m.parameters(recurse=False)) or m._buffers]
        dst = [m for m in list(model.features) + list(model.head)
               if any(True for _ in m.parameters(recurse=False)) or m._buffers]
        with torch.no_grad():
            for a, b in zip(src, dst, strict=True):
                for name, t in a.state_dict().items():
                    b.state_dict()[name].copy_(t.reshape(b.state_dict()[name].shape))
        if getattr(self, "meta", None) is not None:
            model.meta = dict(self.meta)
        ref = next(self.parameters())
        return model.to(device=ref.device, dtype=ref.dtype).train(self.training)

    @property
    def source_model(self) -> PatchClassifier:
        """The equivalent patch classifier (used by ``save_model``)."""
        return self.to_patch_classifier()


def as_dense(model: nn.Module) -> nn.Module:
    """Dense form of a model: ``model.to_dense()`` for a patch classifier, else ``model`` itself."""
    to_dense = getattr(model, "to_dense", None)
    return to_dense() if callable(to_dense) else model


@torch.inference_mode()
def classify_patches(
    model: PatchClassifier,
    volume: torch.Tensor | np.ndarray,
    coords: np.ndarray | Sequence[Sequence[int]],
    batch_size: int = 256,
) -> torch.Tensor:
    """Naive reference: crop each voxel's patch and classify them, one batch at a time.

    Args:
        model: a :class:`PatchClassifier` (its current train/eval mode is used).
        volume: (C, D, H, W) or (D, H, W) image (tensor or array, on/for the model's device).
        coords: (M, 3) patch *origins* (z, y, x): the patch is ``volume[:, z:z+p, y:y+p, x:x+p]``,
            i.e. the classified voxel is ``origin + (p-1)//2``; the same index as
            ``dense(volume[None])[0, :, z, y, x]``.
        batch_size: patches per forward pass.

    Returns:
        (M, K) float tensor of scores (on the model's device).
    """
    ref = next(model.parameters())
    vol = torch.as_tensor(volume).to(device=ref.device, dtype=ref.dtype)
    if vol.ndim == 3:
        vol = vol[None]
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 3)
    p = model.patch_size
    limits = np.array(vol.shape[1:]) - p
    if coords.size and ((coords < 0).any() or (coords > limits).any()):
        raise ShapeError(f"patch origins must lie in [0, {tuple(limits)}] for patch size {p}")
    check_int("batch_size", batch_size, 1)
    out = []
    for start in range(0, len(coords), batch_size):
        chunk = coords[start : start + batch_size]
        patches = torch.stack([vol[:, z : z + p, y : y + p, x : x + p] for z, y, x in chunk])
        out.append(model(patches))
    if not out:
        return torch.zeros((0, model.num_classes), device=ref.device, dtype=ref.dtype)
    return torch.cat(out)
