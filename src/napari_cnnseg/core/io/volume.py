"""The :class:`Volume` record (voxels + geometry in (z, y, x) order) and its geometry helpers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, VolumeReadError

#: unit spellings seen in OME-NGFF / ImageJ -> the symbol we keep in ``metadata["unit"]``
_UNITS = {"millimeter": "mm", "micrometer": "µm", "micron": "µm", "um": "µm", "\\u00b5m": "µm", "μm": "µm",
          "nanometer": "nm", "centimeter": "cm", "meter": "m"}
_NGFF_UNITS = {"mm": "millimeter", "µm": "micrometer", "nm": "nanometer", "cm": "centimeter", "m": "meter"}


def _unit(name: Any) -> str | None:
    """Normalised length unit symbol (``mm``, ``µm``, ...) or None."""
    if not name:
        return None
    return _UNITS.get(str(name).strip().lower(), str(name).strip())


def _as_triplet(values: Any, what: str) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be three numbers (z, y, x), got {values!r}") from exc
    if len(out) != 3:
        raise InputError(f"{what} must be three numbers (z, y, x), got {values!r}")
    if not all(np.isfinite(out)):
        raise InputError(
            f"{what} {out} is not finite; fix the file header or pass a finite {what} (z, y, x)"
        )
    return out  # type: ignore[return-value]


@dataclass(eq=False, repr=False)
class Volume:
    """Voxels plus geometry, all in (z, y, x) axis order.

    Attributes:
        array: voxels (Z, Y, X), or (C, Z, Y, X) when the file has several channels.
            numpy normally; a lazy zarr/dask array is accepted too.
        spacing: voxel size (z, y, x) in the file's unit (mm, or µm for microscopy); > 0.
        origin: physical position (z, y, x) of the centre of voxel (0, 0, 0), LPS frame.
        direction: 3x3 direction cosines; rows = physical axes, columns = index axes, both
            in (z, y, x) order. Physical point of index ``i``: ``origin + direction @ (spacing * i)``.
        metadata: everything else (source path, format, file header, ``class_names``, ...).
    """

    array: Any
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ndim = getattr(self.array, "ndim", None)
        if ndim is None:
            self.array = np.asarray(self.array)
            ndim = self.array.ndim
        if ndim not in (3, 4):
            raise InputError(
                f"expected a 3D volume (Z, Y, X) or (C, Z, Y, X), got shape {tuple(self.array.shape)}; "
                "2D images and time series are not supported: stack slices into a volume"
            )
        self.spacing = _as_triplet(self.spacing, "spacing")
        if min(self.spacing) <= 0:
            raise InputError(f"spacing {self.spacing} must be positive in every axis (z, y, x)")
        self.origin = _as_triplet(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise InputError(f"direction must be a finite 3x3 matrix, got {direction!r}")
        if abs(np.linalg.det(direction)) < 1e-6:
            raise InputError(f"direction matrix is singular: {direction.tolist()}")
        self.direction = direction
        self.metadata = dict(self.metadata)

    def __repr__(self) -> str:
        return (f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
                f"origin={self.origin}, direction={self.direction.round(6).tolist()})")

    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, (Z, Y, X) or (C, Z, Y, X)."""
        return tuple(int(s) for s in self.array.shape)

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) without the channel axis."""
        return self.shape[-3:]  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """1 for (Z, Y, X) arrays, C for (C, Z, Y, X)."""
        return 1 if len(self.shape) == 3 else self.shape[0]

    @property
    def affine(self) -> np.ndarray:
        """4x4 index (z, y, x) -> physical (z, y, x, LPS) matrix."""
        out = np.eye(4)
        out[:3, :3] = self.direction * np.asarray(self.spacing)[None, :]
        out[:3, 3] = self.origin
        return out

    def index_to_physical(self, index: Any) -> np.ndarray:
        """Physical points (..., 3) (z, y, x) of voxel indices (..., 3) (z, y, x)."""
        idx = np.asarray(index, dtype=np.float64)
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    def with_array(self, array: Any, **metadata: Any) -> Volume:
        """Same geometry with new voxels; ``metadata`` entries update a copy of the metadata."""
        meta = dict(self.metadata)
        meta.update(metadata)
        return replace(self, array=array, direction=self.direction.copy(), metadata=meta)

    def same_grid(self, other: Volume) -> bool:
        """True when ``other`` has the same spatial shape, spacing, origin and direction.

        Tolerances: spacing relative 1e-4, origin 1e-3 of the smallest voxel side, direction
        1e-4 (files store geometry as float32 or decimal text).
        """
        return (
            tuple(self.array.shape[-3:]) == tuple(other.array.shape[-3:])
            and np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=1e-6)
            and np.allclose(self.origin, other.origin, rtol=0, atol=1e-3 * min(self.spacing))
            and np.allclose(self.direction, other.direction, atol=1e-4)
        )

    def geometry(self) -> dict[str, Any]:
        """JSON-able geometry: ``{"spacing", "origin", "direction"}`` in (z, y, x) order."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.tolist(),
        }


def _geometry_from_record(record: Any, path: Path) -> dict[str, Any]:
    """Our own JSON geometry record -> Volume keyword arguments."""
    try:
        rec = json.loads(record) if isinstance(record, str | bytes) else dict(record)
        out = {k: rec[k] for k in ("spacing", "origin", "direction")}
    except (ValueError, KeyError, TypeError) as exc:
        raise VolumeReadError(f"{path}: damaged cnnseg geometry record ({exc}); re-export the file") from exc
    meta = {k: v for k, v in rec.items() if k not in out}
    return {**out, "metadata": meta}


def _portable_metadata(volume: Volume) -> dict[str, Any]:
    """The metadata entries worth keeping inside TIFF / Zarr files."""
    return _portable_metadata_of(volume.metadata)


def _portable_metadata_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """:func:`_portable_metadata` of a bare metadata dict."""
    out = {k: metadata[k] for k in ("class_names", "name") if k in metadata}
    if _unit(metadata.get("unit")):
        out["unit"] = _unit(metadata["unit"])
    return out
