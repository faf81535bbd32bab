"""Sample volumes: a deterministic synthetic phantom and a bundled real T1 brain MRI.

* :func:`make_phantom` draws a 4-class 3D phantom (background, organ, vessel, lesion) on an
  anisotropic grid in well under a second. Class intensities overlap on purpose (lesions are
  about as dark as the background; organ texture reaches vessel brightness), so voxel
  intensity alone cannot separate the classes: context matters, as in real data.
* :func:`load_brain_t1` reads the bundled ITK example T1 head MRI (Apache-2.0) with a brain
  mask, through :func:`~napari_cnnseg.core.io.read_volume` so its permuted affine is honoured.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import Volume, read_volume

PHANTOM_CLASSES = ["background", "organ", "vessel", "lesion"]
BRAIN_CLASSES = ["background", "brain"]
#: mean intensity per phantom class (before texture, bias field and noise)
_MEANS = (0.20, 0.55, 0.85, 0.28)


def sample_data_dir() -> Path:
    """Folder of the bundled sample files (package data ``napari_cnnseg/sample_data``)."""
    return Path(str(files("napari_cnnseg") / "sample_data"))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-std smooth noise (Z, Y, X) float32."""
    from scipy.ndimage import gaussian_filter

    field = gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="wrap")
    field -= field.mean()
    field /= field.std() + 1e-8
    return field


def make_phantom(
    shape: tuple[int, int, int] = (48, 96, 96),
    spacing: tuple[float, float, float] = (2.0, 0.5, 0.5),
    seed: int = 0,
) -> tuple[Volume, Volume]:
    """Deterministic synthetic 3D phantom with ground-truth labels.

    An irregular textured "organ" (class 1) in a textured background (0) holds curved tubular
    "vessels" (2) and round "lesions" (3). Shapes are drawn in physical coordinates, so they
    stay round on the anisotropic grid. The image gets per-class texture, a smooth bias field
    and Gaussian noise; lesion and background intensities overlap, so a model needs context.

    Args:
        shape: grid size (Z, Y, X) in voxels; each axis >= 8.
        spacing: voxel size (z, y, x) in mm.
        seed: random seed; equal arguments give identical volumes.

    Returns:
        ``(image, labels)``: image float32 (Z, Y, X), roughly in [0, 1]; labels uint8
        (Z, Y, X) with values 0..3 and ``metadata["class_names"] ==`` :data:`PHANTOM_CLASSES`.
        Both share spacing, origin (0, 0, 0) and an identity direction.
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"phantom shape must be three sizes (Z, Y, X) >= 8, got {shape}")
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise InputError(f"phantom spacing must be three positive numbers (z, y, x), got {spacing}")
    rng = np.random.default_rng(seed)
    extent = np.asarray(shape) * sp  # mm
    half = extent / 2.0
    z, y, x = (((np.arange(n) + 0.5) * s - h).astype(np.float32).reshape(
        [-1 if a == i else 1 for a in range(3)]) for i, (n, s, h) in enumerate(zip(shape, sp, half, strict=True)))
    # smooth noise is drawn on the grid with a physical correlation length
    def noise(length_mm: float) -> np.ndarray:
        return _smooth_noise(rng, shape, tuple(float(length_mm / s) for s in sp))

    # organ: ellipsoid with a wobbly boundary
    radii = half * rng.uniform(0.70, 0.82, size=3)
    wobble = noise(0.35 * float(half.min()))
    organ = (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 + 0.12 * wobble < 1.0

    labels = np.zeros(shape, dtype=np.uint8)
    labels[organ] = 1
    rmin = float(half.min())
    vessel = _vessels(rng, shape, sp, rmin)
    labels[vessel & organ] = 2
    # lesions: a few balls well inside the organ
    inner = (z / radii[0]) ** 2 + (y / radii[1]) ** 2 + (x / radii[2]) ** 2 < 0.45
    candidates = np.argwhere(inner & (labels == 1))
    for _ in range(6):
        if len(candidates) == 0:
            break
        c = candidates[rng.integers(len(candidates))]
        centre = (c + 0.5) * sp - half
        r = rng.uniform(0.10, 0.20) * rmin
        r = max(r, 1.5 * float(sp.max()))
        ball = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < r * r
        labels[ball & organ] = 3

    # image: class means + class-specific texture + bias field + noise
    means = np.asarray(_MEANS, dtype=np.float32)
    image = means[labels]
    fine, coarse = noise(1.5 * float(sp.min()) * 2), noise(0.3 * rmin)
    texture_amp = np.asarray([0.05, 0.10, 0.04, 0.03], dtype=np.float32)[labels]
    image += texture_amp * fine
    image += 0.06 * coarse * (labels == 0)
    bias = 1.0 + 0.15 * (z / half[0]) + 0.08 * (x / half[2])
    image *= bias.astype(np.float32)
    image += rng.normal(0.0, 0.05, size=shape).astype(np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)

    geometry = {"spacing": tuple(float(s) for s in sp), "origin": (0.0, 0.0, 0.0)}
    img = Volume(image, **geometry, metadata={"name": "phantom", "source": "make_phantom",
                                              "seed": int(seed)})
    lab = Volume(labels, **geometry, metadata={"name": "phantom_labels", "source": "make_phantom",
                                               "seed": int(seed),
                                               "class_names": list(PHANTOM_CLASSES)})
    return img, lab


def load_brain_t1() -> tuple[Volume, Volume]:
    """The bundled real T1 head MRI (ITK example data, Apache-2.0) and its brain mask.

    Returns:
        ``(image, mask)``: image int16 (62, 128, 128) (Z, Y, X), values 0..255, spacing
        (3, 2, 2) mm with a permuted (coronal) direction matrix; mask uint8 {0, 1} on the
        same grid with ``metadata["class_names"] == ["background", "brain"]``.
    """
    folder = sample_data_dir()
    image = read_volume(folder / "KmeansTest_T1UCharRaw.nii.gz")
    mask = read_volume(folder / "brain_mask.nii.gz")
    image.metadata.update(name="brain_t1", licence="Apache-2.0 (ITK example data)")
    mask.metadata.update(name="brain_mask", class_names=list(BRAIN_CLASSES),
                         licence="Apache-2.0 (ITK example data)")
    return image, mask


def _vessels(rng: np.random.Generator, shape: tuple[int, int, int], sp: np.ndarray,
             rmin: float) -> np.ndarray:
    """(Z, Y, X) bool: five curved tubes crossing the phantom along x or y (physical radius)."""
    from scipy.ndimage import distance_transform_edt

    half = np.asarray(shape) * sp / 2.0
    n_vessels = 5
    t = np.linspace(-1.0, 1.0, 4 * max(shape))
    vessel = np.zeros(shape, dtype=bool)
    tube_r = max(0.08 * rmin, 0.75 * float(sp.max()), 1.5 * float(sp.min()))
    for _ in range(n_vessels):
        amp = rng.uniform(0.1, 0.35, size=2) * rmin
        freq, phase = rng.uniform(1.0, 2.5, size=2), rng.uniform(0, 2 * np.pi, size=2)
        off = rng.uniform(-0.4, 0.4, size=2) * half[:2]
        pz = off[0] + amp[0] * np.sin(freq[0] * np.pi * t + phase[0])
        pa = off[1] + amp[1] * np.sin(freq[1] * np.pi * t + phase[1])
        pb = t * half[2]
        pts = np.stack([pz, pa, pb], axis=1)
        if rng.random() < 0.5:  # run along y instead of x
            pts = pts[:, [0, 2, 1]]
        idx = np.round((pts + half) / sp - 0.5).astype(int)
        keep = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        seeds = np.zeros(shape, dtype=bool)
        seeds[tuple(idx[keep].T)] = True
        vessel |= distance_transform_edt(~seeds, sampling=sp) < tube_r
    return vessel
