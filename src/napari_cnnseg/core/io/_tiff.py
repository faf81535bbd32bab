"""TIFF stacks (ImageJ / OME spacing, our private geometry tag) through tifffile."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VolumeReadError
from ._arrays import _select_channel, _storable, _to_czyx
from ._checks import check_claimed_size
from .volume import _NGFF_UNITS, Volume, _geometry_from_record, _portable_metadata, _unit

#: private TIFF tag holding our own geometry record (JSON)
TIFF_GEOMETRY_TAG = 65000


def _tiff_spacing(tif: Any) -> tuple[list[float], str | None]:
    """(z, y, x) spacing and unit from OME or ImageJ metadata (1.0 where absent)."""
    spacing, unit = [1.0, 1.0, 1.0], None
    if tif.is_ome and tif.ome_metadata:
        import tifffile

        ome = tifffile.xml2dict(tif.ome_metadata).get("OME", {})
        image = ome.get("Image", {})
        pixels = (image[0] if isinstance(image, list) else image).get("Pixels", {})
        for i, ax in enumerate("ZYX"):
            if f"PhysicalSize{ax}" in pixels:
                spacing[i] = float(pixels[f"PhysicalSize{ax}"])
        return spacing, _unit(pixels.get("PhysicalSizeXUnit", "µm"))
    if tif.is_shaped and tif.shaped_metadata:  # tifffile's own JSON description
        shaped = tif.shaped_metadata[0]
        for i, ax in enumerate("ZYX"):
            if f"PhysicalSize{ax}" in shaped:
                spacing[i] = float(shaped[f"PhysicalSize{ax}"])
        unit = _unit(shaped.get("PhysicalSizeXUnit"))
    page = tif.pages[0]
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        spacing[0] = float(ij.get("spacing", 1.0))
        unit = _unit(ij.get("unit"))
    for i, tag in ((1, "YResolution"), (2, "XResolution")):
        res = page.tags.get(tag)
        if res is not None and (tif.is_imagej or page.tags.get("ResolutionUnit", None) is not None):
            num, den = res.value
            if num > 0 and den > 0 and not (num == 1 and den == 1 and not tif.is_imagej):
                spacing[i] = den / num
    return spacing, unit


class _CollectErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _read_tiff(path: Path, channel: int | None, all_channels: bool) -> Volume:
    import tifffile

    errors = _CollectErrors()  # tifffile logs (not raises) damaged offsets and drops pages
    tiff_log = logging.getLogger("tifffile")
    tiff_log.addHandler(errors)
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            check_claimed_size(tuple(series.shape), int(np.dtype(series.dtype).itemsize), path)
            data = series.asarray()
            axes = series.axes
            spacing, unit = _tiff_spacing(tif)
            record = tif.pages[0].tags.get(TIFF_GEOMETRY_TAG)
            record = record.value if record is not None else None
            description = tif.pages[0].description
            for page in tif.pages:
                if any(o + c > size for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)):
                    errors.messages.append("image data beyond the end of the file")
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        errors.messages.append(str(exc))
    finally:
        tiff_log.removeHandler(errors)
    if errors.messages:
        raise VolumeReadError(
            f"cannot read {path}: corrupt, truncated or not a TIFF file "
            f"({errors.messages[0][:200]}); re-export it"
        )
    data = _select_channel(_to_czyx(data, axes, path), channel, all_channels, path)
    if record is not None:
        geo = _geometry_from_record(record, path)
        meta = geo.pop("metadata")
        meta.setdefault("unit", unit)
        return Volume(np.ascontiguousarray(data), **geo, metadata=meta)
    meta: dict[str, Any] = {"axes": axes, "unit": unit}
    if description and len(description) < 10000:
        meta["description"] = description
    return Volume(np.ascontiguousarray(data), tuple(spacing), metadata=meta)


def _write_tiff(path: Path, volume: Volume) -> None:
    import tifffile

    data = _storable(volume.array)
    axes = "CZYX" if data.ndim == 4 else "ZYX"
    meta: dict[str, Any] = {"axes": axes}
    unit = _unit(volume.metadata.get("unit"))
    for ax, s in zip("ZYX", volume.spacing, strict=True):
        meta[f"PhysicalSize{ax}"] = s
        if unit in _NGFF_UNITS:  # OME knows these symbols
            meta[f"PhysicalSize{ax}Unit"] = unit
    record = json.dumps({**volume.geometry(), **_portable_metadata(volume)})
    tifffile.imwrite(
        path, data, ome=True, metadata=meta, photometric="minisblack", bigtiff=data.nbytes > 2**31 - 2**25,
        extratags=[(TIFF_GEOMETRY_TAG, "s", 0, record, True)],
    )
