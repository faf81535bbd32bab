"""Next suggestion: where to paint next, shown in the Fine-tune dock.

The ranking is :func:`napari_cnnseg.core.suggest.suggest` (Qt-free); this module only shows it.
After every whole-volume prediction (Segment, the refresh after Fine-tune or Undo, a Live
pause) :meth:`SuggestionBox.refresh` ranks the slices again, and the dock shows the top one
("Paint next: slice 37 of 61, region around (y 120, x 88)"). **Next suggestion** moves the
viewer there: the dims step of the slice axis (a 3D view goes back to 2D, the slice axis
becomes the slider) and the camera centre on the region, and outlines the region in one
``<image> suggestions`` Shapes layer, found by its role key (``cnnseg_role`` in
``layer.metadata``) and updated in place. Each further press goes to the next suggestion of
the ranking (and back to the first after the last). The scribbles layer stays on top and
active, so the next stroke lands in it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from .._napari_io import find_layer, geometry_kwargs, role_metadata, unwrap
from ._layers import keep_scribbles_ready, scribbles_layer

logger = logging.getLogger(__name__)

#: how many places are ranked after each prediction
TOP = 5
#: role key of the outline layer
ROLE = "suggestions"
#: outline colour of the suggested region (napari colour name or RGBA)
EDGE_COLOR = "yellow"
#: outline width, in voxels of the image's in-plane grid
EDGE_WIDTH = 0.6


def suggestions_for(session: Any, scribbles: np.ndarray | None, top: int = TOP) -> list[Any]:
    """The ranking of the session's current results (empty without results)."""
    res = session.results
    if res is None or res.probabilities.shape[0] < 2 or res.weights_step < 0:
        return []
    from ..core.suggest import suggest

    if scribbles is not None and tuple(scribbles.shape) != tuple(res.labels.shape):
        scribbles = None
    return suggest(res.probabilities, scribbles=scribbles, labels=res.labels, top=top)


def _in_plane(axis: int) -> tuple[int, int]:
    a, b = (i for i in range(3) if i != axis)
    return a, b


def rectangle(suggestion: Any) -> np.ndarray:
    """(4, 3) vertices (z, y, x data coordinates) around the voxels of the suggestion's box.

    Voxel centres lie on whole numbers, so the half-open box ``[a0, a1)`` has its edges at
    ``a0 - 0.5`` and ``a1 - 0.5``; the vertices lie on the suggested slice.
    """
    a, b = _in_plane(suggestion.axis)
    a0, a1, b0, b1 = (float(v) - 0.5 for v in suggestion.bbox)
    out = np.zeros((4, 3))
    out[:, suggestion.axis] = suggestion.index
    out[:, a] = [a0, a0, a1, a1]
    out[:, b] = [b0, b1, b1, b0]
    return out


def show_outline(viewer: Any, image: Any, suggestion: Any) -> Any:
    """Create or update (in place) the ``<image> suggestions`` layer; returns it."""
    image = unwrap(image)
    rect = rectangle(suggestion)
    layer = find_layer(viewer.layers, ROLE, image.name)
    if layer is None:
        layer = unwrap(viewer.add_shapes(
            [rect], shape_type="rectangle", name=f"{image.name} suggestions",
            edge_color=EDGE_COLOR, face_color="transparent", edge_width=EDGE_WIDTH, opacity=1.0,
            metadata=role_metadata(image, ROLE), **geometry_kwargs(image)))
    else:
        layer.data = [rect]
        layer.shape_type = ["rectangle"]
        layer.edge_color = EDGE_COLOR
        layer.face_color = "transparent"
    layer.visible = True
    keep_scribbles_ready(viewer, image.name)
    return layer


def go_to(viewer: Any, image: Any, suggestion: Any) -> np.ndarray:
    """Show the suggested slice in a 2D view, centred on the region; returns the world point."""
    image = unwrap(image)
    dims = viewer.dims
    lead = image.ndim - 3  # a (C, Z, Y, X) layer has one leading axis
    point = np.zeros(image.ndim)
    point[lead + suggestion.axis] = suggestion.index
    a, b = _in_plane(suggestion.axis)
    point[lead + a], point[lead + b] = suggestion.center
    world = np.asarray(image.data_to_world(point), dtype=float)
    offset = dims.ndim - world.size  # world dims of the layer are the last ones of the viewer
    if dims.ndisplay != 2:
        dims.ndisplay = 2
    slice_world = offset + lead + suggestion.axis
    shown = [offset + lead + a, offset + lead + b]
    if list(dims.displayed) != shown:
        order = [d for d in dims.order if d not in (slice_world, *shown)]
        dims.order = (*order, slice_world, *shown)
    dims.set_point(slice_world, world[lead + suggestion.axis])
    camera(viewer).center = tuple(world[d - offset] for d in dims.displayed)
    return world


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


class SuggestionBox(QWidget):
    """The dock rows: the top suggestion's text and **Next suggestion**.

    The ranking runs in a background thread (a second or more on a big volume), inline when
    jobs run synchronously (``CNNSEG_SYNC=1``); a ranking of results that were replaced in the
    meantime is dropped.

    Args:
        dock: the Fine-tune dock (its ``viewer``, ``ctrl``, ``session`` and ``report``).
    """

    #: (token, suggestions) from the ranking thread, delivered on the GUI thread
    ranked = Signal(object, object)

    def __init__(self, dock: Any) -> None:
        super().__init__()
        self.dock = dock
        self.suggestions: list[Any] = []
        self.index = -1  # the suggestion shown last (-1: none yet since the last ranking)
        self._ranked_step: int | None = None
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.label = QLabel("Suggestions appear after the first Segment.")
        self.label.setWordWrap(True)
        self.label.setToolTip("slices ranked by how many voxels the model probably gets wrong "
                              "(core.suggest); painted voxels are left out")
        lay.addWidget(self.label)
        self.next_btn = QPushButton("Next suggestion")
        self.next_btn.setToolTip("go to the place to paint next and outline it")
        self.next_btn.clicked.connect(lambda: self.next())
        lay.addWidget(self.next_btn)
        self.next_btn.setEnabled(False)
        self.ranked.connect(self._ranked)

    def refresh(self, force: bool = False) -> None:
        """Rank again after a whole-volume prediction (skipped if the results did not change)."""
        from . import _worker

        s = self.dock.session
        res = s.results
        token = None if res is None else (id(res), res.weights_step)
        if not force and token == self._ranked_step:
            return
        self._ranked_step = token
        img = self.dock.ctrl.image_layer
        scr = scribbles_layer(self.dock.viewer, img.name) if img is not None else None
        data = None if scr is None else np.array(scr.data, copy=True)
        if _worker.SYNC:
            self._ranked(token, self._rank(data))
        else:
            threading.Thread(target=self._rank_and_send, args=(token, data),
                             name="cnnseg-suggest", daemon=True).start()

    def _rank_and_send(self, token: Any, scribbles: np.ndarray | None) -> None:
        """Ranking thread: rank, then hand the result to the GUI thread (queued signal)."""
        suggestions = self._rank(scribbles)
        try:
            self.ranked.emit(token, suggestions)
        except RuntimeError:  # the dock was closed meanwhile
            logger.debug("suggestions ready after the dock was closed")

    def _rank(self, scribbles: np.ndarray | None) -> list[Any]:
        try:
            return suggestions_for(self.dock.session, scribbles)
        except Exception as exc:  # noqa: BLE001 - a failed ranking never blocks the dock
            logger.warning("suggestions failed: %s", exc)
            return []

    def _ranked(self, token: Any, suggestions: list[Any]) -> None:
        if token != self._ranked_step:
            return  # results replaced meanwhile: a newer ranking is on its way
        self.suggestions = suggestions
        self.index = -1
        self._show_text()

    def _show_text(self) -> None:
        s = self.dock.session
        if not self.suggestions:
            none = s.results is not None and s.results.weights_step >= 0
            self.label.setText("No suggestion: the model is sure everywhere." if none
                               else "Suggestions appear after the first Segment.")
        else:
            i = max(self.index, 0)
            n = len(self.suggestions)
            head = "Paint next" if self.index < 0 else f"Suggestion {i + 1} of {n}"
            self.label.setText(f"{head}: {self.suggestions[i].describe(s.spatial_shape)}")
        self.update_enabled()

    def update_enabled(self, busy: bool = False) -> None:
        self.next_btn.setEnabled(bool(self.suggestions) and not busy)

    def next(self) -> Any:
        """Go to the next suggestion (the top one first); returns it, or None."""
        img = self.dock.ctrl.image_layer
        if not self.suggestions or img is None or not self.dock.ctrl.has_layer(img):
            self.dock.report("no suggestion yet: run Segment first")
            return None
        self.index = (self.index + 1) % len(self.suggestions)
        suggestion = self.suggestions[self.index]
        try:
            go_to(self.dock.viewer, img, suggestion)
            show_outline(self.dock.viewer, img, suggestion)
        except Exception as exc:  # noqa: BLE001
            self.dock.report(exc)
            return None
        self._show_text()
        return suggestion
