"""napari-cnnseg: interactive CNN segmentation of 3D volumes.

The Qt-free engine lives in :mod:`napari_cnnseg.core`; napari contributions in
``napari.yaml`` point at thin modules (``_napari_io``, ``_widgets``) over it.
"""

from __future__ import annotations

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-cnnseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
