"""State shared by the Segment and Fine-tune docks of one viewer, and notifications.

One :class:`Controller` per viewer holds the Qt-free :class:`~napari_cnnseg._session.Session`,
the chosen image layer, the running job (one at a time) and signals that keep both docks in
sync. The layer helpers live in :mod:`._layers` (re-exported here for older imports), the
layer <-> Volume conversions in :mod:`napari_cnnseg._napari_io`.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from psygnal import Signal

from .._napari_io import (  # noqa: F401 - re-exported for older imports
    ROLE_KEY,
    geometry_kwargs,
    layer_source_path,
    layer_volume,
    unwrap,
)
from .._session import Session
from ..core.errors import CnnsegError, InputError
from ._layers import (  # noqa: F401 - re-exported: demo.py and older imports use them from here
    labels_colormap,
    labels_features,
    refresh_region,
    result_names,
    show_results,
)

logger = logging.getLogger(__name__)


def notify_error(exc: BaseException | str) -> str:
    """Show an error as a napari notification (clear message, no traceback); returns the text."""
    if isinstance(exc, CnnsegError) or isinstance(exc, str):
        msg = str(exc)
    else:
        logger.error("unexpected error", exc_info=exc)
        msg = f"{type(exc).__name__}: {exc}"
    try:
        from napari.utils.notifications import show_error

        show_error(msg)
    except Exception:  # noqa: BLE001 - notification is best effort
        logger.error(msg)
    return msg


def notify_info(msg: str) -> None:
    """Show an informational napari notification."""
    try:
        from napari.utils.notifications import show_info

        show_info(msg)
    except Exception:  # noqa: BLE001
        logger.info(msg)


# ---------------------------------------------------------------- per-viewer controller
class Controller:
    """Shared state of the docks of one viewer.

    Attributes:
        session: the Qt-free session (image, model, versions, results).
        image_layer: the (unwrapped) Image layer chosen in the Segment dock, or None.
        channel: chosen channel of a 4D image layer (None = all channels).
        job: the running job, if any (one at a time per viewer).
        segment_seconds: wall time of the last whole-volume Segment (progress estimates).

    Signals (no arguments): ``image_changed``, ``model_changed``, ``results_changed``,
    ``busy_changed`` (a job started or ended).
    """

    image_changed = Signal()
    model_changed = Signal()
    results_changed = Signal()
    busy_changed = Signal()

    def __init__(self, viewer: Any) -> None:
        self._viewer_ref = weakref.ref(viewer) if _weakrefable(viewer) else (lambda v=viewer: v)
        self.session = Session()
        self.image_layer: Any = None
        self.channel: int | None = None
        self.job: Any = None
        self.segment_seconds: float | None = None
        self._bound_data: Any = None

    @property
    def viewer(self) -> Any:
        return self._viewer_ref()

    def changed(self, what: str) -> None:
        """Emit ``<what>_changed`` (what: image, model, results, busy); kept for scripts."""
        getattr(self, f"{what}_changed").emit()

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def bind_image(self, layer: Any, channel: int | None = None) -> None:
        """Make ``layer`` (channel) the session image; raises InputError if unusable."""
        layer = unwrap(layer)
        if self.busy and layer is not self.image_layer:
            raise InputError("a job is running: wait for it or press Cancel / Stop first")
        if (
            layer is self.image_layer
            and channel == self.channel
            and layer.data is self._bound_data
            and self.session.volume is not None
            and self.session.image_name == layer.name
        ):
            return
        volume = layer_volume(layer, channel)
        self.session.set_image(volume, name=layer.name, source_path=layer_source_path(layer))
        self.image_layer = layer
        self.channel = channel
        self._bound_data = layer.data
        self.image_changed.emit()

    def unbind(self) -> None:
        """Forget the chosen image layer (the session keeps its last image and results)."""
        if self.image_layer is not None:
            self.image_layer = None
            self._bound_data = None
            self.image_changed.emit()

    def has_layer(self, layer: Any) -> bool:
        """Whether ``layer`` (or the layer behind a proxy) is in the viewer."""
        layer = unwrap(layer)
        return layer is not None and any(unwrap(x) is layer for x in self.viewer.layers)

    def require_image_layer(self) -> Any:
        if self.image_layer is None or not self.has_layer(self.image_layer):
            raise InputError("no image chosen: open a 3D image and pick it in the Segment dock")
        return self.image_layer


def _weakrefable(obj: Any) -> bool:
    try:
        weakref.ref(obj)
    except TypeError:
        return False
    return True


_CONTROLLERS: dict[int, tuple[Any, Controller]] = {}


def controller_for(viewer: Any) -> Controller:
    """The controller of ``viewer`` (created on first use, shared by both docks)."""
    # napari hands plugins a PublicOnlyProxy of the viewer (a new one per dock): unwrap it
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    entry = _CONTROLLERS.get(key)
    if entry is not None:
        ref, ctrl = entry
        if ref() is viewer:
            return ctrl
    ctrl = Controller(viewer)
    _CONTROLLERS[key] = (ctrl._viewer_ref, ctrl)
    # forget controllers of viewers that are gone
    for k in [k for k, (r, _) in _CONTROLLERS.items() if r() is None]:
        del _CONTROLLERS[k]
    return ctrl
