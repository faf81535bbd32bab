"""State shared by the Segment and Fine-tune docks of one viewer, and layer helpers.

One :class:`Controller` per viewer holds the Qt-free :class:`~napari_cnnseg._session.Session`,
the chosen image layer, the running job (one at a time) and listeners that keep both docks in
sync. The layer helpers turn session results into napari layers named after the source image
(``<image> labels``, ``<image> p(<class>)``, ``<image> uncertainty``, ``<image> scribbles``),
on the source's scale / translate / geometry metadata, updating existing layers in place.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .._colors import class_color, class_colormap
from .._session import RegionUpdate, Session
from ..core.errors import CnnsegError, InputError

logger = logging.getLogger(__name__)

ROLE_KEY = "cnnseg_role"


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


# ---------------------------------------------------------------- image layer -> volume
def layer_volume(layer: Any, channel: int | None = None) -> Any:
    """A core.io Volume view of an Image layer (no copy for numpy/dask/zarr data).

    Args:
        layer: napari Image layer, data (Z, Y, X) or (C, Z, Y, X).
        channel: for 4D data, the channel to use; None keeps all channels.

    Raises:
        InputError: RGB, 2D or more than 4D data, or a channel out of range.
    """
    if getattr(layer, "rgb", False):
        raise InputError(
            f"layer {layer.name!r} is an RGB image; convert it to grayscale or open the channels "
            "as separate layers"
        )
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if data.ndim == 2:
        raise InputError(
            f"layer {layer.name!r} is a 2D image (shape {tuple(data.shape)}); the CNN needs a 3D "
            "volume (Z, Y, X): open a volume or a stack of slices"
        )
    if data.ndim not in (3, 4):
        raise InputError(
            f"layer {layer.name!r} has shape {tuple(data.shape)}; expected (Z, Y, X) or "
            "(C, Z, Y, X): open channels as separate layers (channel_axis) or crop the time axis"
        )
    if data.ndim == 4 and channel is not None:
        if not 0 <= channel < data.shape[0]:
            raise InputError(
                f"channel {channel} does not exist: layer {layer.name!r} has {data.shape[0]}"
            )
        data = data[channel]
    from .._napari_io import layer_to_volume

    return layer_to_volume(data, layer.metadata, layer.scale, layer.translate)


def layer_source_path(layer: Any) -> str | None:
    """File the layer was read from, if napari knows it."""
    src = getattr(layer, "source", None)
    path = getattr(src, "path", None)
    if not path:
        from .._napari_io import GEOMETRY_KEY

        path = ((layer.metadata or {}).get(GEOMETRY_KEY) or {}).get("source")
    if not path or not os.path.exists(str(path)):
        return None  # e.g. generated sample data: identified by content instead
    return str(path)


def geometry_kwargs(image_layer: Any) -> dict[str, Any]:
    """scale / translate / metadata (and affine for 3D layers) copied from the source layer."""
    kwargs: dict[str, Any] = {
        "scale": tuple(image_layer.scale[-3:]),
        "translate": tuple(image_layer.translate[-3:]),
    }
    if image_layer.ndim == 3:
        kwargs["affine"] = np.asarray(image_layer.affine.affine_matrix)
    return kwargs


def _metadata(image_layer: Any, role: str, **extra: Any) -> dict[str, Any]:
    meta = {k: v for k, v in dict(image_layer.metadata or {}).items() if k != ROLE_KEY}
    meta[ROLE_KEY] = {"role": role, "source": image_layer.name, **extra}
    return meta


def labels_colormap(class_names: list[str], *, scribbles: bool = False) -> Any:
    """DirectLabelColormap: class c -> class_color(c) (0 transparent); scribble k -> class k-1."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, Any] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0)}
    for c in range(len(class_names)):
        if scribbles:
            colors[c + 1] = class_color(c)
        elif c > 0:
            colors[c] = class_color(c)
    return DirectLabelColormap(color_dict=colors)


def labels_features(class_names: list[str], *, scribbles: bool = False) -> dict[str, Any]:
    """Labels layer features so that hovering shows the class name."""
    if scribbles:
        return {"index": list(range(len(class_names) + 1)), "class": ["unlabelled", *class_names]}
    return {"index": list(range(len(class_names))), "class": list(class_names)}


def result_names(image_name: str, class_names: list[str]) -> dict[str, Any]:
    """Names of the output layers of an image."""
    return {
        "labels": f"{image_name} labels",
        "probabilities": [f"{image_name} p({c})" for c in class_names],
        "uncertainty": f"{image_name} uncertainty",
        "scribbles": f"{image_name} scribbles",
    }


def _find(viewer: Any, name: str, kind: str) -> Any:
    if name in viewer.layers:
        layer = viewer.layers[name]
        if type(layer).__name__.lower() == kind:
            return layer
    return None


def show_results(viewer: Any, image_layer: Any, session: Session) -> dict[str, Any]:
    """Create or update (in place) the labels / probability / uncertainty layers.

    Returns:
        dict with keys labels, probabilities (list), uncertainty -> the layers.
    """
    res = session.results
    if res is None:
        raise InputError("nothing to show yet: run Segment first")
    names = session.class_names
    wanted = result_names(image_layer.name, names)
    geo = geometry_kwargs(image_layer)
    out: dict[str, Any] = {"probabilities": []}

    for k, (pname, prob) in enumerate(zip(wanted["probabilities"], res.probabilities, strict=False)):
        layer = _find(viewer, pname, "image")
        if layer is not None and layer.data.shape == prob.shape:
            layer.data = prob
            layer.contrast_limits = (0.0, 1.0)
        else:
            if layer is not None:
                viewer.layers.remove(layer)
            layer = viewer.add_image(
                prob,
                name=pname,
                colormap=class_colormap(k),
                blending="additive",
                contrast_limits=(0.0, 1.0),
                visible=k > 0,
                opacity=0.8,
                metadata=_metadata(image_layer, "probability", class_index=k, class_name=names[k]),
                **geo,
            )
        out["probabilities"].append(layer)
    # drop probability layers of classes the current model does not have
    for layer in list(viewer.layers):
        info = (layer.metadata or {}).get(ROLE_KEY) or {}
        if (
            info.get("role") == "probability"
            and info.get("source") == image_layer.name
            and layer.name not in wanted["probabilities"]
        ):
            viewer.layers.remove(layer)

    layer = _find(viewer, wanted["uncertainty"], "image")
    if layer is not None and layer.data.shape == res.uncertainty.shape:
        layer.data = res.uncertainty
        layer.contrast_limits = (0.0, 1.0)
    else:
        layer = viewer.add_image(
            res.uncertainty,
            name=wanted["uncertainty"],
            colormap="inferno",
            blending="additive",
            contrast_limits=(0.0, 1.0),
            visible=False,
            metadata=_metadata(image_layer, "uncertainty"),
            **geo,
        )
    out["uncertainty"] = layer

    layer = _find(viewer, wanted["labels"], "labels")
    if layer is not None and layer.data.shape == res.labels.shape:
        layer.data = res.labels
    else:
        if layer is not None:
            viewer.layers.remove(layer)
        layer = viewer.add_labels(
            res.labels, name=wanted["labels"], opacity=0.45, metadata={}, **geo
        )
    layer.metadata = _metadata(image_layer, "labels", class_names=names)
    layer.colormap = labels_colormap(names)
    layer.features = labels_features(names)
    out["labels"] = layer
    return out


def refresh_region(viewer: Any, image_layer: Any, session: Session, update: RegionUpdate) -> bool:
    """Apply a live region update to the session results and repaint the output layers."""
    if not session.apply_region(update):
        return False
    res = session.results
    names = result_names(image_layer.name, session.class_names)
    pairs = [(names["labels"], "labels", res.labels, update.labels)]
    pairs.append((names["uncertainty"], "image", res.uncertainty, update.uncertainty))
    for pname, full, part in zip(names["probabilities"], res.probabilities, update.probabilities, strict=False):
        pairs.append((pname, "image", full, part))
    for name, kind, full, part in pairs:
        layer = _find(viewer, name, kind)
        if layer is None:
            continue
        if layer.data is not full and layer.data.shape == full.shape:
            layer.data[update.roi] = part
        layer.refresh()
    return True


# ---------------------------------------------------------------- per-viewer controller
class Controller:
    """Shared state of the docks of one viewer.

    Attributes:
        session: the Qt-free session (image, model, versions, results).
        image_layer: the Image layer currently chosen in the Segment dock (or None).
        channel: chosen channel of a 4D image layer (None = all channels).
        job: the running job, if any (one at a time per viewer).
    """

    def __init__(self, viewer: Any) -> None:
        self._viewer_ref = weakref.ref(viewer) if _weakrefable(viewer) else (lambda v=viewer: v)
        self.session = Session()
        self.image_layer: Any = None
        self.channel: int | None = None
        self.job: Any = None
        self._bound_data: Any = None
        self._listeners: list[Callable[[str], None]] = []

    @property
    def viewer(self) -> Any:
        return self._viewer_ref()

    def subscribe(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(what)`` on changes: 'image', 'model', 'results', 'busy'."""
        self._listeners.append(fn)

    def changed(self, what: str) -> None:
        for fn in list(self._listeners):
            try:
                fn(what)
            except Exception:  # noqa: BLE001 - one broken listener must not break the others
                logger.exception("listener failed on %r", what)

    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def bind_image(self, layer: Any, channel: int | None = None) -> None:
        """Make ``layer`` (channel) the session image; raises InputError if unusable."""
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
        self.changed("image")

    def unbind(self) -> None:
        """Forget the chosen image layer (the session keeps its last image and results)."""
        if self.image_layer is not None:
            self.image_layer = None
            self._bound_data = None
            self.changed("image")

    def require_image_layer(self) -> Any:
        if self.image_layer is None or self.image_layer not in self.viewer.layers:
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
