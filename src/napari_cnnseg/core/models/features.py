"""Fixed (not learned) input features: Gaussian, gradient magnitude and Laplacian at a few scales.

A random forest on multiscale filters learns a new structure from a few strokes because its
inputs already describe every voxel at several scales; a CNN trained from scratch on ~10^3
painted voxels has to learn those filters first. :class:`InputFeatures` gives the network the
same head start as its first layer: for each input channel it outputs the channel itself and,
per scale, the Gaussian-smoothed image and its scale-normalised gradient magnitude
(``sigma * |grad G_sigma * x|``) and scale-normalised Laplacian of Gaussian (blobs: ``sigma^2 *
lap G_sigma * x``). It is an ordinary ``nn.Module`` inside the network, so
checkpoints, tiling and inference need nothing extra, and it costs a few separable 1-channel
convolutions per step.

Sigmas are per axis (z, y, x) in voxels, so thick slices are smoothed in-plane only (a sigma
below ``MIN_SIGMA`` is no smoothing along that axis, and no derivative along it either).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InputError

#: a sigma (voxels) below this is treated as "no smoothing along this axis"
MIN_SIGMA = 0.3


def scale_sigmas(spacing: Sequence[float], scales: Sequence[float] = (1.0, 2.0, 4.0)
                 ) -> list[list[float]]:
    """Per-axis sigmas (z, y, x) in voxels for in-plane ``scales`` on a grid of ``spacing``.

    The finest in-plane spacing sets the unit: a scale of 2 is 2 voxels in-plane and the same
    physical width along coarser axes (0 where that is below :data:`MIN_SIGMA` voxels).
    """
    sp = [float(s) for s in spacing]
    if len(sp) != 3 or min(sp) <= 0:
        raise InputError(f"spacing must be three positive sizes (z, y, x), got {spacing}")
    unit = min(sp[1], sp[2])
    out = []
    for s in scales:
        sig = [s * unit / a for a in sp]
        out.append([round(v, 3) if v >= MIN_SIGMA else 0.0 for v in sig])
    return out


def _smoothing_matrix(kernel: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """(n, n) matrix M with ``(x @ M)[j] = sum_t kernel[t] * x[clamp(j + t - r)]`` (replicate)."""
    r = (kernel.numel() - 1) // 2
    j = torch.arange(n)
    src = (j[None, :] + torch.arange(-r, r + 1)[:, None]).clamp(0, n - 1)  # (taps, n)
    m = torch.zeros(n, n)
    m.index_put_((src.reshape(-1), j.repeat(2 * r + 1)), kernel.repeat_interleave(n),
                 accumulate=True)
    return m.to(device)


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class InputFeatures(nn.Module):
    """(N, C, Z, Y, X) -> (N, C * (1 + 3 * S), Z', Y', X'): image, then per scale smoothed,
    gradient magnitude and Laplacian.

    Args:
        in_channels: image channels C.
        sigmas: S per-axis sigmas ``[sz, sy, sx]`` in voxels (0 = not along that axis).
        padding: "same" (replicate-padded borders, output = input) or "valid" (output =
            input - 2 * ``margin``; every output voxel is computed from real data only, so
            tiled outputs equal a one-pass output exactly).
    """

    def __init__(self, in_channels: int, sigmas: Sequence[Sequence[float]],
                 padding: str = "same") -> None:
        super().__init__()
        clean: list[tuple[float, float, float]] = []
        for s in sigmas:
            try:
                trip = tuple(float(v) for v in s)
            except (TypeError, ValueError):
                raise InputError(f"feature sigmas must be [z, y, x] triples, got {s!r}") from None
            if len(trip) != 3 or min(trip) < 0 or max(trip) > 32 or max(trip) < MIN_SIGMA:
                raise InputError(
                    f"feature sigma {s!r}: three values (z, y, x) in voxels, 0..32, at least one "
                    f">= {MIN_SIGMA}"
                )
            clean.append(trip)  # type: ignore[arg-type]
        if padding not in ("same", "valid"):
            raise InputError(f"padding must be 'same' or 'valid', got {padding!r}")
        self.in_channels = int(in_channels)
        self.sigmas = clean
        self.padding = padding
        self.out_channels = self.in_channels * (1 + 3 * len(clean))
        radius = [0, 0, 0]
        for i, trip in enumerate(clean):
            for axis, sig in enumerate(trip):
                if sig >= MIN_SIGMA:
                    k = _gaussian_kernel(sig)
                    self.register_buffer(f"k{i}_{axis}", k, persistent=False)
                    radius[axis] = max(radius[axis], (k.numel() - 1) // 2 + 1)
        #: voxels lost per side in valid mode (z, y, x): kernel radius + 1 for derivatives
        self.margin = tuple(radius) if padding == "valid" else (0, 0, 0)

    def _smooth(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """Separable Gaussian with replicate borders, one matrix product per axis (BLAS: a
        1-channel convolution with a 97-tap kernel is ~50x slower on a CPU)."""
        for axis in range(3):
            k = getattr(self, f"k{i}_{axis}", None)
            if k is None:
                continue
            m = _smoothing_matrix(k, x.shape[2 + axis], x.device)
            x = torch.movedim(torch.movedim(x, 2 + axis, -1) @ m, -1, 2 + axis)
        return x

    @staticmethod
    def _derivatives(x: torch.Tensor, axes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient magnitude and Laplacian (central differences, replicate borders)."""
        sq = torch.zeros_like(x)
        lap = torch.zeros_like(x)
        for axis in axes:
            d = 2 + axis
            n = x.shape[d]
            if n < 2:
                continue
            lo = torch.cat([x.narrow(d, 0, 1), x.narrow(d, 0, n - 1)], d)
            hi = torch.cat([x.narrow(d, 1, n - 1), x.narrow(d, n - 1, 1)], d)
            sq = sq + (0.5 * (hi - lo)) ** 2
            lap = lap + (hi + lo - 2 * x)
        return torch.sqrt(sq + 1e-12), lap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        with torch.autocast(x.device.type, enabled=False):
            flat = x.reshape(n * c, 1, *x.shape[2:]).float()
            outs = [flat]
            for i, trip in enumerate(self.sigmas):
                g = self._smooth(flat, i)
                axes = [a for a in range(3) if trip[a] >= MIN_SIGMA]
                grad, lap = self._derivatives(g, axes)
                s = max(trip)
                outs += [g, s * grad, s * s * lap]
            y = torch.cat(outs, 1)  # (N*C, 1+3S, ...)
        if self.padding == "valid":
            mz, my, mx = self.margin
            y = y[:, :, mz:y.shape[2] - mz, my:y.shape[3] - my, mx:y.shape[4] - mx]
        y = y.reshape(n, c * y.shape[1], *y.shape[2:]).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last_3d):
            y = y.contiguous(memory_format=torch.channels_last_3d)
        return y
