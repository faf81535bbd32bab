"""Qt-free engine of napari-cnnseg: I/O, networks, inference, training, metrics.

Nothing under ``napari_cnnseg.core`` may import napari, magicgui or qtpy (a test checks it),
so that scripts, the CLI and 3D Slicer can use the engine without a GUI stack.
"""

from __future__ import annotations

from .errors import Cancelled, CnnsegError, InputError

__all__ = ["Cancelled", "CnnsegError", "InputError"]
