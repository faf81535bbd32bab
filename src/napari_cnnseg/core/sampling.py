"""Crop sampling around scribbles for sparse-label training.

A :class:`ScribbleSampler` cuts training crops out of a normalised volume so that every
crop's *output* region (what the network predicts) contains painted voxels, with the
painted classes drawn in turn (class balancing). It works for every network family through
a :class:`CropGeometry`:

* valid-convolution nets: the input crop is the output crop grown by ``margin`` per side;
  the volume is mirror-padded by ``margin`` so voxels at the border can be trained on;
* same-padding nets: input crop == output crop (a shape the net accepts);
* patch classifiers: the input is one patch, the output its single centre voxel.

Augmentation (random flips on every axis, random intensity gain/offset per channel) is
applied on the fly; flips are applied to the input and the target together.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class CropGeometry:
    """Shapes of one training sample, all in (Z, Y, X) voxels.

    Attributes:
        in_shape: network input crop.
        out_shape: network output crop (its voxels carry the loss).
        offset: output voxel ``i`` lies over input voxel ``i + offset`` (valid nets: margin).
    """

    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    offset: tuple[int, int, int]

    def __post_init__(self) -> None:
        for i, o, m in zip(self.in_shape, self.out_shape, self.offset, strict=True):
            if o < 1 or m < 0 or i < o + 2 * m:
                raise InputError(
                    f"inconsistent crop geometry: input {self.in_shape}, output {self.out_shape}, "
                    f"offset {self.offset}; input must be at least output + 2 * offset"
                )


@dataclass
class Batch:
    """One training batch (numpy, ready for ``torch.from_numpy``).

    Attributes:
        image: float32 (N, C, *in_shape), normalised and augmented.
        target: int64 (N, *out_shape); 0 = unpainted, k = class k-1 (scribble convention).
    """

    image: np.ndarray
    target: np.ndarray


class ScribbleSampler:
    """Draws class-balanced training crops whose output region contains scribbles.

    Args:
        image: normalised float32 volume (C, Z, Y, X).
        scribbles: integer array (Z, Y, X); 0 = unlabelled, k = class k-1.
        geometry: crop shapes of the network.
        seed: seed of the sampler's own random generator (crops and augmentation).
        augment: apply flips and intensity jitter.
        intensity_jitter: maximum relative gain change and additive offset (normalised units).

    Raises:
        InputError: no voxel is painted, or shapes disagree.
    """

    def __init__(
        self,
        image: np.ndarray,
        scribbles: np.ndarray,
        geometry: CropGeometry,
        *,
        seed: int = 0,
        augment: bool = True,
        intensity_jitter: float = 0.1,
    ) -> None:
        if image.ndim != 4 or image.shape[1:] != scribbles.shape:
            raise InputError(
                f"scribbles of shape {scribbles.shape} do not match the image grid "
                f"{image.shape[1:]}; paint the scribbles on the image's own grid"
            )
        self.geometry = geometry
        self.augment = augment
        self.jitter = float(intensity_jitter)
        self.rng = np.random.default_rng(seed)
        spatial = np.array(scribbles.shape)
        out = np.array(geometry.out_shape)
        off = np.array(geometry.offset)
        extra_in = np.array(geometry.in_shape) - out - 2 * off  # in > out + 2*off (rare)
        # pad so that an output crop fits anywhere: grow small axes, then add the margin
        grow = np.maximum(out - spatial, 0)
        lo = off + extra_in // 2
        hi = off + grow + (extra_in - extra_in // 2)
        pad = [(0, 0)] + [(int(a), int(b)) for a, b in zip(lo, hi, strict=True)]
        self.image = np.pad(image, pad, mode="reflect" if min(spatial) > 1 else "edge")
        self.labels = np.pad(scribbles, [(0, int(g)) for g in grow], mode="constant")
        self.out_space = spatial + grow  # grid on which output crops start
        # one pass over the volume (painted voxels are few), not one comparison per class
        flat = np.flatnonzero(self.labels)
        values = self.labels.reshape(-1)[flat]
        painted = np.unique(values)
        if painted.size == 0:
            raise InputError("no voxel is painted: paint at least one scribble before fine-tuning")
        self.classes = [int(c) for c in painted]
        self.coords = {c: np.stack(np.unravel_index(flat[values == c], self.labels.shape), 1)
                       for c in self.classes}
        self._turn = int(self.rng.integers(len(self.classes)))

    def _origin(self, voxel: np.ndarray) -> np.ndarray:
        out = np.array(self.geometry.out_shape)
        start = voxel - self.rng.integers(0, out)  # the voxel lands anywhere in the crop
        return np.clip(start, 0, self.out_space - out)

    def sample(self, batch_size: int) -> Batch:
        """Draw ``batch_size`` crops, one painted class after another (class balancing)."""
        gi, go = self.geometry.in_shape, self.geometry.out_shape
        c = self.image.shape[0]
        x = np.empty((batch_size, c, *gi), np.float32)
        y = np.empty((batch_size, *go), np.int64)
        for n in range(batch_size):
            cls = self.classes[self._turn % len(self.classes)]
            self._turn += 1
            pts = self.coords[cls]
            voxel = pts[int(self.rng.integers(len(pts)))]
            z, yy, xx = (int(v) for v in self._origin(voxel))
            xi = self.image[:, z:z + gi[0], yy:yy + gi[1], xx:xx + gi[2]]
            yi = self.labels[z:z + go[0], yy:yy + go[1], xx:xx + go[2]]
            if self.augment:
                for axis in range(3):
                    if self.rng.random() < 0.5:
                        xi = np.flip(xi, axis=axis + 1)
                        yi = np.flip(yi, axis=axis)
            y[n] = yi
            if self.augment and self.jitter > 0:
                gain = 1.0 + self.rng.uniform(-self.jitter, self.jitter, size=(c, 1, 1, 1))
                shift = self.rng.uniform(-self.jitter, self.jitter, size=(c, 1, 1, 1))
                # written straight into the batch (no temporaries): crop * gain, then + shift
                np.multiply(xi, gain.astype(np.float32), out=x[n])
                x[n] += shift.astype(np.float32)
            else:
                x[n] = xi
        return Batch(image=x, target=y)
