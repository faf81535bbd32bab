"""napari reader, writers and sample data: a thin layer over :mod:`napari_cnnseg.core.io`.

Layers made here get ``scale = spacing`` and ``translate = origin`` (both (z, y, x)), so layers
on the same grid overlay in napari; the full geometry (including the direction matrix, which
napari's ``scale``/``translate`` cannot carry) rides in
``layer.metadata["cnnseg_geometry"] = {"spacing", "origin", "direction", "source"}``.
The writers put the data back on that geometry, so an exported segmentation lands exactly on
its source in any viewer (3D Slicer, ITK-SNAP, ...).

It also holds the Qt-free conversions the docks use (layer -> Volume, geometry keywords, the
role key that identifies result layers in ``layer.metadata``, the CT display window, the default
export path): napari may hand a plugin proxies of its viewer and layers
(``napari.utils._proxies.PublicOnlyProxy``), so nothing here looks at ``type(layer)``.

This module imports neither napari nor Qt at import time: npe2 calls plain functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.io import (
    READ_SUFFIXES,
    WRITE_SUFFIXES,
    Volume,
    is_dicom_file,
    read_volume,
    write_volume,
)

logger = logging.getLogger(__name__)

GEOMETRY_KEY = "cnnseg_geometry"
#: ``layer.metadata[ROLE_KEY] = {"role": ..., "source": <image layer name>, ...}`` marks the
#: layers the docks made (labels, probability, uncertainty, scribbles): their identity
ROLE_KEY = "cnnseg_role"
#: CT display windows (HU): name -> (low, high) contrast limits
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "lung": (-1350.0, 150.0),  # W 1500 / L -600
    "soft tissue": (-160.0, 240.0),  # W 400 / L 40
}
#: file names holding one of these (lower case) open as a Labels layer when the data are integers
LABEL_NAME_HINTS = ("_seg", "seg_", "label", "mask", "annotation")
#: metadata entries copied from a Volume into layer.metadata (JSON-able, small)
_KEPT_METADATA = ("class_names", "format", "unit")

LayerData = tuple[Any, dict[str, Any], str]


# ----------------------------------------------------------------------------- conversions


def volume_to_layer_kwargs(volume: Volume, *, name: str | None = None) -> dict[str, Any]:
    """napari layer keyword arguments for a volume: ``name``, ``scale``, ``translate``, ``metadata``.

    Args:
        volume: the :class:`~napari_cnnseg.core.io.Volume`; (Z, Y, X) or (C, Z, Y, X).
        name: layer name; default ``volume.metadata["name"]`` or the source file stem.

    Returns:
        kwargs for ``viewer.add_image`` / ``add_labels`` / a layer data tuple. For a
        (C, Z, Y, X) volume, ``scale``/``translate`` have 3 entries: use ``channel_axis=0``.
    """
    source = volume.metadata.get("source")
    if name is None:
        name = volume.metadata.get("name") or (_stem(source) if source else "volume")
    metadata: dict[str, Any] = {GEOMETRY_KEY: {**volume.geometry(), "source": source}}
    metadata.update({k: volume.metadata[k] for k in _KEPT_METADATA if k in volume.metadata})
    return {
        "name": str(name),
        "scale": tuple(float(s) for s in volume.spacing),
        "translate": tuple(float(o) for o in volume.origin),
        "metadata": metadata,
    }


def layer_to_volume(
    data: Any,
    metadata: dict[str, Any] | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
) -> Volume:
    """Rebuild a :class:`Volume` from a layer's data and attributes.

    The geometry recorded by :func:`volume_to_layer_kwargs` wins, unless the layer's ``scale``
    was changed since (then ``scale``/``translate`` are used with the recorded direction).
    Layers that never had a recorded geometry get ``scale``/``translate`` and an identity
    direction.

    Args:
        data: layer data, (Z, Y, X) or (C, Z, Y, X); numpy, dask or zarr.
        metadata: ``layer.metadata``.
        scale: ``layer.scale`` (its last three entries are (z, y, x)).
        translate: ``layer.translate``.
    """
    metadata = dict(metadata or {})
    geometry = metadata.get(GEOMETRY_KEY) or {}
    kept = {k: metadata[k] for k in _KEPT_METADATA if k in metadata}
    if geometry.get("source"):
        kept["source"] = geometry["source"]
    layer_scale = None if scale is None else tuple(float(s) for s in list(scale)[-3:])
    layer_origin = None if translate is None else tuple(float(t) for t in list(translate)[-3:])
    if geometry and (layer_scale is None or np.allclose(layer_scale, geometry["spacing"], rtol=1e-9)):
        spacing, origin = geometry["spacing"], geometry["origin"]
        if layer_origin is not None and not np.allclose(layer_origin, origin, rtol=1e-9, atol=1e-9):
            logger.warning("layer was moved (translate %s != origin %s); writing the layer's translate",
                           layer_origin, origin)
            origin = layer_origin
    else:
        if geometry:
            logger.warning("layer scale %s differs from its recorded spacing %s; writing the layer's scale",
                           layer_scale, geometry["spacing"])
        spacing = layer_scale or (1.0, 1.0, 1.0)
        origin = layer_origin or (0.0, 0.0, 0.0)
    direction = geometry.get("direction", np.eye(3))
    return Volume(data, tuple(spacing), tuple(origin), np.asarray(direction, dtype=float), kept)


def unwrap(obj: Any) -> Any:
    """The napari object behind a proxy (napari hands plugins ``PublicOnlyProxy`` wrappers)."""
    return getattr(obj, "__wrapped__", obj)


def layer_volume(layer: Any, channel: int | None = None) -> Volume:
    """A :class:`Volume` view of an Image layer (no copy for numpy/dask/zarr data).

    Args:
        layer: napari Image layer (or any proxy of one), data (Z, Y, X) or (C, Z, Y, X).
        channel: for 4D data, the channel to use; None keeps all channels.

    Raises:
        InputError: RGB, 2D or more than 4D data, or a channel out of range.
    """
    from .core.errors import InputError

    name = layer.name
    if getattr(layer, "rgb", False):
        raise InputError(f"layer {name!r} is an RGB image; convert it to grayscale or open the "
                         "channels as separate layers")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if data.ndim == 2:
        raise InputError(f"layer {name!r} is a 2D image (shape {tuple(data.shape)}); the CNN "
                         "needs a 3D volume (Z, Y, X): open a volume or a stack of slices")
    if data.ndim not in (3, 4):
        raise InputError(f"layer {name!r} has shape {tuple(data.shape)}; expected (Z, Y, X) or "
                         "(C, Z, Y, X): open channels as separate layers (channel_axis) or crop "
                         "the time axis")
    if data.ndim == 4 and channel is not None:
        if not 0 <= channel < data.shape[0]:
            raise InputError(f"channel {channel} does not exist: layer {name!r} has {data.shape[0]}")
        data = data[channel]
    return layer_to_volume(data, layer.metadata, layer.scale, layer.translate)


def layer_source_path(layer: Any) -> str | None:
    """File the layer was read from (napari's ``layer.source`` or the recorded geometry), if it exists."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        path = ((layer.metadata or {}).get(GEOMETRY_KEY) or {}).get("source")
    if not path or not os.path.exists(str(path)):
        return None  # e.g. generated sample data: identified by content instead
    return str(path)


def geometry_kwargs(image_layer: Any) -> dict[str, Any]:
    """``scale`` / ``translate`` (and ``affine`` for 3D layers) of the source layer, (z, y, x)."""
    kwargs: dict[str, Any] = {
        "scale": tuple(float(s) for s in image_layer.scale[-3:]),
        "translate": tuple(float(t) for t in image_layer.translate[-3:]),
    }
    if image_layer.ndim == 3:
        kwargs["affine"] = np.asarray(image_layer.affine.affine_matrix)
    return kwargs


def layer_role(layer: Any) -> dict[str, Any]:
    """The role record of a layer the docks made (``{}`` for any other layer)."""
    info = (getattr(layer, "metadata", None) or {}).get(ROLE_KEY)
    return dict(info) if isinstance(info, dict) else {}


def role_metadata(image_layer: Any, role: str, **extra: Any) -> dict[str, Any]:
    """Metadata for a layer made from ``image_layer``: its geometry record plus the role key."""
    meta = {k: v for k, v in dict(image_layer.metadata or {}).items() if k != ROLE_KEY}
    meta[ROLE_KEY] = {"role": role, "source": image_layer.name, **extra}
    return meta


def find_layer(layers: Any, role: str, source: str, **match: Any) -> Any:
    """The (unwrapped) layer with this role for image ``source``, or None.

    Identity is the role key in ``layer.metadata`` (see :func:`role_metadata`), never the
    class name or the layer name, so renamed layers and napari's proxies are found too.
    ``match`` adds more keys that must agree (e.g. ``class_index=1``).
    """
    for layer in layers:
        info = layer_role(layer)
        if (info.get("role") == role and info.get("source") == source
                and all(info.get(k) == v for k, v in match.items())):
            return unwrap(layer)
    return None


def ct_window(array: Any, metadata: dict[str, Any] | None = None) -> tuple[str, tuple[float, float]] | None:
    """The display window of a CT volume, or None when ``array`` does not look like a CT.

    Rule: a CT is a volume whose metadata say modality CT (DICOM tag 0008|0060), or, without
    a modality, whose values (sampled on a coarse grid) reach -900 HU or below (air) but not
    below -3100 and rise to 200 or above (soft tissue/bone): Hounsfield units. A CT where at
    least 10 % of the samples lie in -950..-400 HU (aerated lung) gets the lung window
    (-1350..150), any other CT the soft-tissue window (-160..240).

    Args:
        array: (Z, Y, X) or (C, Z, Y, X) intensities (numpy, dask or zarr; only a sample is read).
        metadata: the Volume's metadata (``modality`` or ``header["0008|0060"]``).
    """
    metadata = metadata or {}
    header = metadata.get("header") or {}
    modality = str(metadata.get("modality") or header.get("0008|0060") or "").strip().upper()
    if modality and modality != "CT":
        return None
    steps = tuple(max(1, n // 32) for n in array.shape)
    sample = np.asarray(array[tuple(slice(None, None, s) for s in steps)], dtype=np.float32)
    if sample.size == 0 or not np.isfinite(sample).all():
        return None
    lo, hi = float(sample.min()), float(sample.max())
    if modality != "CT" and not (-3100.0 <= lo <= -900.0 and hi >= 200.0):
        return None
    lung = float(np.mean((sample >= -950.0) & (sample <= -400.0)))
    name = "lung" if lung >= 0.10 else "soft tissue"
    return name, CT_WINDOWS[name]


def default_output_path(source_path: str | None, image_name: str, what: str,
                        suffix: str | None = None) -> str:
    """Where a save dialog starts: beside the source file, named after it, in its format.

    ``what`` is appended to the stem (``lung1_image_labels.nrrd``); ``suffix`` forces a format
    (e.g. ``.safetensors``). Without a source file: the home folder and NIfTI.
    """
    from .core.io import WRITE_SUFFIXES as writable

    if source_path:
        src = Path(source_path)
        folder = src.parent  # a DICOM folder: beside it
        stem = _stem(src)
        own = next((s for s in sorted(writable, key=len, reverse=True)
                    if src.name.lower().endswith(s)), None)
    else:
        folder, stem, own = Path.home(), image_name, None
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem) or "image"
    return str(folder / f"{safe}_{what}{suffix or own or '.nii.gz'}")


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for s in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(s):
            return name[: -len(s)] or name
    return name


def _looks_like_labels(path: str, volume: Volume) -> bool:
    if not np.issubdtype(volume.array.dtype, np.integer) and volume.array.dtype != bool:
        return False
    if volume.metadata.get("class_names"):
        return True
    return any(h in Path(path).name.lower() for h in LABEL_NAME_HINTS)


# ----------------------------------------------------------------------------- reader


def _supported(path: str) -> bool:
    p = Path(path)
    name = p.name.lower()
    if name.endswith(READ_SUFFIXES):
        return p.exists()
    if p.is_dir():
        if any((p / f).exists() for f in (".zgroup", ".zarray", "zarr.json")):
            return True
        return _holds_dicom(p)
    return p.is_file() and is_dicom_file(p)


def _holds_dicom(folder: Path, max_files: int = 200) -> bool:
    """Whether a DICOM file lies in ``folder`` or below (looks at ``max_files`` files at most)."""
    seen = 0
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        for name in sorted(names):
            f = Path(root) / name
            if name.lower().endswith(".dcm") or is_dicom_file(f):
                return True
            seen += 1
            if seen >= max_files:
                return False
    return False


def get_reader(path: str | list[str]) -> Callable[[Any], list[LayerData]] | None:
    """npe2 reader hook: a reader function for volumes core.io can read, else None.

    Never raises: anything unexpected means "not for this plugin" (None).
    """
    try:
        paths = [path] if isinstance(path, str | os.PathLike) else list(path)
        if paths and all(_supported(str(p)) for p in paths):
            return read_layers
    except Exception:  # noqa: BLE001 - a reader hook must not raise
        logger.debug("get_reader(%r) failed", path, exc_info=True)
    return None


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one or several paths into napari layer data tuples (Image or Labels)."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        p = str(p)
        volume = read_volume(p, all_channels=True, lazy=True)  # big Zarr stores stay on disk
        kwargs = volume_to_layer_kwargs(volume)
        if _looks_like_labels(p, volume):
            if volume.array.ndim == 4:
                volume = volume.with_array(volume.array[0])
                logger.warning("%s: labels with several channels; showing channel 0", p)
            # labels get painted: load them (a lazy store is opened read-only)
            layers.append((np.asarray(volume.array), kwargs, "labels"))
        else:
            if volume.array.ndim == 4:
                kwargs["channel_axis"] = 0
            window = ct_window(volume.array, volume.metadata)
            if window is not None:
                kwargs["contrast_limits"] = window[1]
                kwargs["metadata"]["cnnseg_window"] = window[0]
            layers.append((volume.array, kwargs, "image"))
    return layers


# ----------------------------------------------------------------------------- writers


def _smallest_label_dtype(data: np.ndarray) -> np.ndarray:
    """napari labels are often int32/int64: store them as the smallest unsigned type that fits."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.size and np.issubdtype(data.dtype, np.integer) and data.min() >= 0:
        top = int(data.max())
        for dt in (np.uint8, np.uint16, np.uint32):
            if top <= np.iinfo(dt).max:
                return data.astype(dt, copy=False)
    return data


def _write(path: str, data: Any, meta: dict[str, Any], labels: bool) -> list[str]:
    meta = meta or {}
    array = np.asarray(data)
    if labels:
        array = _smallest_label_dtype(array)
    volume = layer_to_volume(array, meta.get("metadata"), meta.get("scale"), meta.get("translate"))
    if meta.get("name"):
        volume.metadata.setdefault("name", meta["name"])
    if not str(path).lower().endswith(WRITE_SUFFIXES):
        path = f"{path}.nii.gz"
    return [str(write_volume(path, volume))]


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Image layers; returns the written paths."""
    return _write(path, data, meta, labels=False)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for Labels layers (stored as the smallest unsigned dtype)."""
    return _write(path, data, meta, labels=True)


# ----------------------------------------------------------------------------- sample data


def _sample(image: Volume, labels: Volume, image_name: str, labels_name: str) -> list[LayerData]:
    img_kwargs = volume_to_layer_kwargs(image, name=image_name)
    lab_kwargs = volume_to_layer_kwargs(labels, name=labels_name)
    return [(image.array, img_kwargs, "image"), (labels.array, lab_kwargs, "labels")]


def sample_phantom() -> list[LayerData]:
    """Synthetic 4-class phantom (48, 96, 96) at (2, 0.5, 0.5) mm, with its ground truth."""
    from .core.sample_data import make_phantom

    image, labels = make_phantom()
    return _sample(image, labels, "phantom", "phantom ground truth")


def sample_brain_mri() -> list[LayerData]:
    """Real T1 head MRI (ITK example, Apache-2.0) with its brain mask."""
    from .core.sample_data import load_brain_t1

    image, mask = load_brain_t1()
    return _sample(image, mask, "brain T1", "brain mask")
