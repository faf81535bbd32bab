"""Synthetic lesions inserted into real volumes: development data with headroom for the RF.

:func:`insert_lesion` blends one irregular blob into a real scan and returns the new image and
its mask. Everything is drawn from a seeded generator and expressed in physical units or in
the scan's own intensity statistics, so the same code makes lesions for any volume:

* size: a radius of 4-14 mm, different per axis (ellipsoid axes 0.6-1.4x), with a lumpy
  boundary (the radius modulated by smoothed noise);
* place: a random voxel of the "body" (above the image's 30th percentile), at least one
  radius from the volume's border;
* contrast: the lesion's mean is the local tissue mean shifted by 0.6-2.5 local standard
  deviations, up or down, so some lesions sit close to the intensity of tissue around them;
* texture and partial volume: multiplicative smoothed noise inside, a blurred border.

Shapes are (Z, Y, X); spacing in mm, (z, y, x).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _body_voxel(image: np.ndarray, margin: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    body = image > np.percentile(image, 30)
    inner = np.zeros_like(body)
    sl = tuple(slice(int(m), max(int(m) + 1, s - int(m))) for m, s in zip(margin, image.shape, strict=True))
    inner[sl] = body[sl]
    pts = np.argwhere(inner if inner.any() else body)
    return pts[rng.integers(len(pts))]


def insert_lesion(image: np.ndarray, spacing: tuple[float, float, float], *, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic lesion in ``image`` (Z, Y, X): returns (float32 image, bool mask)."""
    rng = np.random.default_rng(seed)
    img = np.asarray(image, np.float32)
    sp = np.asarray(spacing, float)
    radius_mm = rng.uniform(4.0, 14.0) * rng.uniform(0.6, 1.4, size=3)
    radius = np.maximum(radius_mm / sp, 0.8)  # voxels per axis
    centre = _body_voxel(img, np.ceil(radius) + 1, rng)
    half = np.ceil(1.6 * radius).astype(int) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, img.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    grids = np.meshgrid(*[np.arange(a, b) - c for a, b, c in zip(lo, hi, centre, strict=True)], indexing="ij")
    r = np.sqrt(sum((g / rad) ** 2 for g, rad in zip(grids, radius, strict=True)))
    lumps = ndimage.gaussian_filter(rng.standard_normal(r.shape), sigma=np.maximum(radius / 2, 0.5))
    lumps /= max(float(np.abs(lumps).max()), 1e-6)
    alpha = np.clip((1.0 + 0.3 * lumps - r) / 0.25 + 0.5, 0.0, 1.0)  # soft edge (partial volume)
    local = img[box]
    ring = (r > 1.3) & (r < 2.5)
    ref = local[ring] if ring.sum() > 10 else local.ravel()
    mean, std = float(ref.mean()), float(ref.std()) or float(img.std()) or 1.0
    shift = rng.uniform(0.6, 2.5) * std * (1 if rng.random() < 0.5 else -1)
    texture = 1.0 + 0.15 * ndimage.gaussian_filter(rng.standard_normal(r.shape), 1.0) / 0.2
    lesion = (mean + shift) * texture + rng.normal(0, 0.3 * std, r.shape)
    out = img.copy()
    out[box] = local * (1 - alpha) + lesion.astype(np.float32) * alpha
    mask = np.zeros(img.shape, bool)
    mask[box] = alpha >= 0.5
    return out, mask
