"""Zarr / OME-Zarr stores (level 0, multiscales scale / translation) through zarr."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeReadError
from ._arrays import _check_spatial, _lazy_czyx, _select_channel, _storable, _to_czyx
from ._checks import check_claimed_size, check_zarr_chunks
from .volume import _NGFF_UNITS, Volume, _geometry_from_record, _portable_metadata_of, _unit

#: group attribute holding our own geometry record
GEOMETRY_KEY = "cnnseg"


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in (".zgroup", ".zarray", "zarr.json"))


def _is_zarr_group_attrs(attrs: dict) -> dict:
    """OME-NGFF metadata dict (0.4: attrs; 0.5: attrs["ome"])."""
    return attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs


def _read_zarr(path: Path, channel: int | None, all_channels: bool, lazy: bool = False) -> Volume:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises many types for damaged stores
        raise VolumeReadError(f"cannot open {path} as Zarr ({exc}); check that it is a Zarr store") from exc
    attrs = dict(node.attrs)
    ngff = _is_zarr_group_attrs(attrs)
    spacing, origin, axes, unit = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], None, None
    if isinstance(node, zarr.Array):
        array = node
    elif ngff.get("multiscales"):
        ms = ngff["multiscales"][0]
        level = ms["datasets"][0]
        try:
            array = node[level["path"]]
        except KeyError as exc:
            raise VolumeReadError(f"{path}: multiscales level {level['path']!r} is missing; the store is incomplete") from exc
        axes_meta = ms.get("axes") or [{"name": n} for n in "tczyx"[-array.ndim:]]
        names = [(a["name"] if isinstance(a, dict) else str(a)).lower() for a in axes_meta]
        scale, trans = np.ones(len(names)), np.zeros(len(names))
        for tr in list(level.get("coordinateTransformations", [])) + list(ms.get("coordinateTransformations", [])):
            if tr.get("type") == "scale":
                scale = scale * np.asarray(tr["scale"], dtype=float)
            elif tr.get("type") == "translation":
                trans = trans + np.asarray(tr["translation"], dtype=float)
        spatial = [i for i, n in enumerate(names) if n in ("z", "y", "x")][-3:]
        if len(spatial) == 3:
            spacing = [float(scale[i]) for i in spatial]
            origin = [float(trans[i]) for i in spatial]
        unit = _unit(next((a.get("unit") for a in axes_meta if isinstance(a, dict) and a.get("unit")), None))
        letters = {"z": "Z", "y": "Y", "x": "X", "c": "C", "t": "T"}
        axes = "".join(letters.get(n, "Q") for n in names)
    else:
        arrays = list(node.array_keys())
        if len(arrays) != 1:
            raise VolumeReadError(
                f"{path} is a Zarr group without OME multiscales metadata holding "
                f"{len(arrays)} arrays {arrays[:5]}; give the path of one array inside it"
            )
        array = node[arrays[0]]
    if array.ndim < 3:
        _check_spatial(tuple(array.shape), path)
    axes = axes or ("CZYX" if array.ndim == 4 else "ZYX")
    view = _lazy_czyx(array, axes) if lazy else None
    # untrusted metadata: refuse absurd shapes and chunk grids before reading any voxel
    itemsize = int(np.dtype(array.dtype).itemsize)
    check_zarr_chunks(tuple(array.shape), tuple(array.chunks), itemsize, path)
    check_claimed_size(tuple(array.shape), itemsize, path, in_memory=view is None)
    if view is not None:
        # keep the zarr array (or a view of it): voxels load only when sliced
        data = _select_channel(view, channel, all_channels, path)
    else:
        data = _select_channel(_to_czyx(np.asarray(array[...]), axes, path), channel, all_channels, path)
    record = attrs.get(GEOMETRY_KEY)
    if record is not None:
        geo = _geometry_from_record(record, path)
        return Volume(data, **geo)
    return Volume(data, tuple(spacing), tuple(origin), metadata={"unit": unit} if unit else {})


def _create_zarr(path: Path, shape: tuple[int, ...], dtype: Any, geometry: dict[str, Any],
                 metadata: dict[str, Any], chunks: tuple[int, ...] | None = None) -> Any:
    """Create an OME-Zarr 0.4 group at ``path`` with one empty (Z, Y, X) / (C, Z, Y, X) array.

    Args:
        path: the store folder (written as is; callers make it atomic).
        shape: (Z, Y, X) or (C, Z, Y, X).
        dtype: voxel type.
        geometry: ``Volume.geometry()`` of the grid (spacing, origin, direction in (z, y, x)).
        metadata: the volume's metadata (``class_names``, ``name``, ``unit`` are kept).
        chunks: chunk shape; default at most 64 per spatial axis and 1 channel per chunk.

    Returns:
        The level-0 ``zarr.Array`` (filled with zeros until written).
    """
    import zarr

    shape = tuple(int(s) for s in shape)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    if chunks is None:
        chunks = tuple(min(s, 64) for s in shape[-3:])
        if len(shape) == 4:
            chunks = (1, *chunks)
    arr = root.create_array("0", shape=shape, dtype=np.dtype(dtype), chunks=tuple(chunks))
    unit = _unit(metadata.get("unit"))
    ngff_unit = _NGFF_UNITS.get(unit or "")
    axes = [{"name": n, "type": "space", **({"unit": ngff_unit} if ngff_unit else {})} for n in "zyx"]
    scale, trans = list(geometry["spacing"]), list(geometry["origin"])
    if len(shape) == 4:
        axes.insert(0, {"name": "c", "type": "channel"})
        scale, trans = [1.0, *scale], [0.0, *trans]
    root.attrs["multiscales"] = [{
        "version": "0.4",
        "name": str(metadata.get("name", path.stem)),
        "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": scale}, {"type": "translation", "translation": trans}]}],
    }]
    root.attrs[GEOMETRY_KEY] = {**geometry, **_portable_metadata_of(metadata)}
    return arr


def _write_zarr(path: Path, volume: Volume) -> None:
    data = _storable(volume.array)
    arr = _create_zarr(path, data.shape, data.dtype, volume.geometry(), volume.metadata)
    arr[...] = data
