"""Shape rules and small building blocks shared by every network in :mod:`core.models`.

The *network protocol* (see ``docs/ARCHITECTURE.md``): every dense segmentation network has

* ``in_channels``, ``num_classes`` (ints) and the class attribute ``arch_name`` (registry name);
* ``padding``: ``"valid"`` (output smaller than input, exact tiling) or ``"same"``;
* ``margin``: voxels lost per side, (z, y, x); output voxel ``i`` sits on input voxel
  ``i + margin`` (``(0, 0, 0)`` for same nets);
* ``lattice``: (z, y, x) step of the input grid on which the network is exactly
  shift-equivariant (pooling / downsampling grid). Tiles whose origins differ by multiples of
  it give exactly the same output voxels as one pass over the whole volume;
* ``output_shape(input_shape)`` and ``valid_input_shape(min_shape)`` (both (Z, Y, X)); a shape
  the network cannot take raises :class:`~napari_cnnseg.core.errors.ShapeError` naming the
  nearest valid shape;
* ``get_config()`` (JSON-able dict, ``build_model(arch_name, **config)`` rebuilds it);
* ``forward(x)``: (N, C, Z, Y, X) float tensor -> logits (N, K, *output_shape((Z, Y, X))).

Shape rules are computed per axis by a pure function ``axis_rule(size) -> out | None`` so
that ``output_shape`` and ``valid_input_shape`` cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ShapeError

Shape3 = tuple[int, int, int]
AxisRule = Callable[[int], "int | None"]

NORMS = ("batch", "instance", "group", "none")
_SEARCH_LIMIT = 4096


def as_shape3(shape: Any, what: str = "shape", *, minimum: int | None = None) -> Shape3:
    """Coerce an int or a 3-sequence into a (z, y, x) tuple of ints, else raise InputError
    (also when a value is below ``minimum``, if given)."""
    if isinstance(shape, int):
        shape = (shape, shape, shape)
    try:
        out = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be 3 integers (z, y, x), got {shape!r}") from None
    if len(out) != 3:
        raise InputError(f"{what} must be 3 integers (z, y, x), got {shape!r}")
    if minimum is not None and min(out) < minimum:
        kind = "non-negative" if minimum == 0 else f">= {minimum}"
        raise InputError(f"{what} must be 3 {kind} integers (z, y, x), got {shape!r}")
    return out  # type: ignore[return-value]


def smallest_valid(rule: AxisRule, minimum: int) -> int:
    """Smallest size ``>= max(minimum, 1)`` accepted by a per-axis ``rule``."""
    start = max(1, int(minimum))
    for size in range(start, start + _SEARCH_LIMIT):
        if rule(size) is not None:
            return size
    raise ShapeError(f"no valid input size found from {minimum} (search limit)")  # pragma: no cover


def largest_valid_below(rule: AxisRule, maximum: int) -> int | None:
    """Largest size ``<= maximum`` accepted by ``rule``, or None."""
    for size in range(int(maximum), 0, -1):
        if rule(size) is not None:
            return size
    return None


def apply_rules(rules: Sequence[AxisRule], shape: Sequence[int], name: str) -> Shape3:
    """Output shape for ``shape`` under per-axis ``rules``; raise ShapeError with the nearest fix."""
    shape3 = as_shape3(shape, "input shape")
    out = [rule(s) for rule, s in zip(rules, shape3, strict=True)]
    if all(o is not None for o in out):
        return tuple(int(o) for o in out)  # type: ignore[return-value]
    up = tuple(smallest_valid(rule, s) for rule, s in zip(rules, shape3, strict=True))
    down = [largest_valid_below(rule, s) for rule, s in zip(rules, shape3, strict=True)]
    hint = f"pad the input to {up}"
    if all(d is not None for d in down):
        hint += f" or crop it to {tuple(down)}"
    raise ShapeError(
        f"{name} cannot take an input of shape (Z, Y, X) = {shape3}: {hint} "
        f"(nearest valid shapes; model.valid_input_shape(min_shape) computes them)"
    )


class SegNet(nn.Module):
    """Base class of dense networks: shape-rule plumbing, config and input checks.

    Subclasses set ``arch_name``, ``in_channels``, ``num_classes``, ``padding``,
    ``_rules`` (three per-axis rules) and ``_config`` in ``__init__``.
    """

    arch_name: str = "segnet"
    padding: str = "valid"

    def __init__(self) -> None:
        super().__init__()
        self._rules: tuple[AxisRule, AxisRule, AxisRule] = (lambda s: s,) * 3  # type: ignore
        self._config: dict[str, Any] = {}
        self.lattice: Shape3 = (1, 1, 1)

    # --- shape rules -------------------------------------------------------------------
    def output_shape(self, input_shape: Sequence[int]) -> Shape3:
        """Output (Z, Y, X) for an input (Z, Y, X); raises ShapeError naming the nearest valid input."""
        return apply_rules(self._rules, input_shape, self.describe())

    def valid_input_shape(self, min_shape: Sequence[int] | int = 1) -> Shape3:
        """Smallest input (Z, Y, X) accepted by the network that is ``>= min_shape`` per axis."""
        mins = as_shape3(min_shape, "min_shape")
        return tuple(smallest_valid(r, m) for r, m in zip(self._rules, mins, strict=True))  # type: ignore

    @property
    def margin(self) -> Shape3:
        """Voxels lost per side (z, y, x): ``(input - output) // 2`` (0 for same padding)."""
        shp = self.valid_input_shape(1)
        out = self.output_shape(shp)
        return tuple((i - o) // 2 for i, o in zip(shp, out, strict=True))  # type: ignore

    def get_config(self) -> dict[str, Any]:
        """JSON-able configuration; ``build_model(self.arch_name, **config)`` rebuilds the net."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self._config.items()}

    def describe(self) -> str:
        return f"{self.arch_name} ({self.padding} padding)"

    def check_input(self, x: torch.Tensor) -> Shape3:
        """Validate a (N, C, Z, Y, X) tensor; return the output spatial shape."""
        if x.ndim != 5:
            raise ShapeError(
                f"{self.arch_name} expects a 5D tensor (N, C, Z, Y, X), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise InputError(
                f"{self.arch_name} was built for {self.in_channels} input channel(s) but got "
                f"{x.shape[1]}; pass an image with {self.in_channels} channel(s)"
            )
        return self.output_shape(tuple(x.shape[2:]))

    def extra_repr(self) -> str:
        return f"arch={self.arch_name!r}, padding={self.padding!r}"


# --- building blocks ---------------------------------------------------------------------
def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise InputError if ``value`` is not one of ``choices``."""
    if value not in choices:
        raise InputError(
            f"{name}={value!r} is not valid; choose one of {', '.join(repr(c) for c in choices)}"
        )


def check_int(name: str, value: Any, minimum: int = 0) -> int:
    """Return ``value`` as int if it is an integer ``>= minimum``; else raise InputError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_int_tuple(name: str, value: Any) -> tuple[int, ...]:
    """Return ``value`` (an int or a list of integers) as a tuple of ints; else raise InputError."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if isinstance(value, (str, bytes)):
        raise InputError(f"{name} must be a list of integers, got {value!r}")
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a list of integers, got {value!r}") from None
    if any(isinstance(v, bool) for v in value) or any(float(a) != b for a, b in zip(value, out, strict=True)):
        raise InputError(f"{name} must be a list of integers, got {value!r}")
    return out


def check_widths(name: str, value: Any, *, nonempty: bool = False) -> tuple[int, ...]:
    """Channel widths: a tuple of positive ints (at least one when ``nonempty``)."""
    widths = check_int_tuple(name, value)
    if nonempty and (not widths or any(w < 1 for w in widths)):
        raise InputError(f"{name} must be one or more positive integers, got {widths!r}")
    if any(w < 1 for w in widths):
        raise InputError(f"{name} must be positive integers, got {widths!r}")
    return widths


def check_float(name: str, value: Any, low: float, high: float) -> float:
    """Return ``value`` as float if ``low <= value < high``; else raise InputError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
        raise InputError(f"{name} must be a number in [{low}, {high}), got {value!r}")
    return float(value)


def make_norm(norm: str, channels: int) -> nn.Module:
    """Normalisation layer by name: batch | instance | group | none.

    ``group`` uses up to 8 groups (the largest divisor of ``channels`` that is <= 8).
    Instance and group norm use per-tile statistics: tiled results then differ slightly
    from one-pass results; batch norm (eval mode) and none are exactly tileable.
    """
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm3d(channels)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if norm == "group":
        groups = max(g for g in range(1, 9) if channels % g == 0)
        return nn.GroupNorm(groups, channels)
    return nn.Identity()


def conv_block(
    in_ch: int,
    out_ch: int,
    kernel: Shape3,
    *,
    same: bool,
    norm: str,
    dilation: Shape3 = (1, 1, 1),
) -> nn.Sequential:
    """Conv3d + norm + ReLU; 'same' pads (k-1)/2 per side; no conv bias before a norm."""
    pad = tuple((k - 1) // 2 * d for k, d in zip(kernel, dilation, strict=True)) if same else 0
    conv = nn.Conv3d(
        in_ch, out_ch, kernel, padding=pad, dilation=dilation, bias=(norm == "none")
    )
    return nn.Sequential(conv, make_norm(norm, out_ch), nn.ReLU(inplace=True))


class _Crop(torch.autograd.Function):
    """Basic slicing whose gradient keeps the input's memory format.

    Autograd's own slice backward scatters into a *contiguous* zero tensor; for a
    ``channels_last_3d`` skip connection that mixes memory formats in the encoder's
    backward pass (slow sums, slow ReLU / BatchNorm backward). Same values, faster.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, slices: tuple[slice, ...]) -> torch.Tensor:
        ctx.shape, ctx.slices = x.shape, slices
        ctx.channels_last = x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last_3d
        )
        return x[slices]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        fmt = torch.channels_last_3d if ctx.channels_last else torch.contiguous_format
        out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=fmt)
        out.zero_()
        out[ctx.slices] = grad
        return out, None


def center_crop(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Crop the last three axes of ``x`` to ``shape``, centred (differences must be even)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], shape, strict=True):
        lo = (have - want) // 2
        slices.append(slice(lo, lo + want))
    if tuple(x.shape[2:]) == tuple(shape):
        return x
    if x.requires_grad and torch.is_grad_enabled():
        return _Crop.apply(x, tuple(slices))
    return x[tuple(slices)]
