"""The scribbles side of the Fine-tune dock: the layer, the class chooser, the autosave.

One meaning for values everywhere (engine, CLI, saved scribbles, Slicer): scribble value k is
class k-1, 0 = unlabelled. The dock makes that visible instead of asking users to remember it:
the **Paint class** chooser lists the class names with their colour swatch and brush value and
sets the brush; the scribble colour of value k is the colour of class k-1 in the labels layer
and the probability map; hovering either layer shows the class name (layer ``features``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from qtpy.QtGui import QColor, QIcon, QPixmap

from .._colors import class_color
from .._napari_io import geometry_kwargs, role_metadata, unwrap
from ..core.errors import InputError
from ._layers import (
    keep_scribbles_ready,
    labels_colormap,
    labels_features,
    result_names,
    scribbles_layer,
)
from ._shared import notify_info

logger = logging.getLogger(__name__)


def class_icon(index: int, size: int = 14) -> QIcon:
    """A square swatch in the colour of class ``index``."""
    pixmap = QPixmap(size, size)
    r, g, b, _ = class_color(index)
    pixmap.fill(QColor(int(255 * r), int(255 * g), int(255 * b)))
    return QIcon(pixmap)


class ScribblesMixin:
    """Scribble-layer methods of the Fine-tune dock (uses its ``class_combo``, ``ctrl``, ...)."""

    _scribbles_layer: Any = None

    # ---------------------------------------------------------------- class chooser
    def _fill_classes(self, names: list[str]) -> None:
        """One entry per class: swatch, name, brush value (keeps the chosen class)."""
        texts = [f"{name}   (brush value {k + 1})" for k, name in enumerate(names)]
        if [self.class_combo.itemText(i) for i in range(self.class_combo.count())] == texts:
            return
        keep = self.class_combo.currentIndex()
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for k, text in enumerate(texts):
            self.class_combo.addItem(class_icon(k), text, k)
        self.class_combo.setCurrentIndex(keep if 0 <= keep < len(names) else min(1, len(names) - 1))
        self.class_combo.blockSignals(False)
        layer = self._existing_scribbles()
        if layer is not None:
            self._style(layer, names)

    @staticmethod
    def _style(layer: Any, names: list[str]) -> None:
        layer.colormap = labels_colormap(names, scribbles=True)
        layer.features = labels_features(names, scribbles=True)

    def _on_class_chosen(self, index: int) -> None:
        layer = self._scribbles_layer
        if layer is not None and index >= 0:
            layer.selected_label = index + 1

    def _on_selected_label(self, event: Any = None) -> None:
        value = int(self._scribbles_layer.selected_label)
        if 1 <= value <= self.class_combo.count():
            self.class_combo.blockSignals(True)
            self.class_combo.setCurrentIndex(value - 1)
            self.class_combo.blockSignals(False)

    # ---------------------------------------------------------------- the layer
    def _image_layer(self) -> Any:
        layer = self.ctrl.image_layer
        if layer is None or not self.ctrl.has_layer(layer):
            raise InputError("no image chosen: pick an image and a model in the Segment dock first")
        return layer

    def _existing_scribbles(self) -> Any:
        img = self.ctrl.image_layer
        if img is None:
            return None
        layer = scribbles_layer(self.viewer, img.name)
        if layer is not None:
            self._watch(layer)
        return layer

    def add_scribbles_layer(self) -> Any:
        """Create (or select) the scribbles Labels layer of the chosen image; returns it.

        The layer lies on the image grid (same shape, scale, translate), its colours and
        names follow the model's classes (value k = class k-1), it sits on top of the results
        with the paint brush selected, and scribbles autosaved for this image are restored.
        """
        try:
            img = self._image_layer()
            self.ctrl.bind_image(img, self.ctrl.channel)
            names = self.session.class_names if self.session.model is not None else None
        except Exception as exc:  # noqa: BLE001
            self.report(exc)
            return None
        paint_index = self.class_combo.currentIndex()
        layer = self._existing_scribbles()
        if layer is None:
            layer = self._new_scribbles_layer(img)
        if names:
            self._style(layer, names)
        layer.brush_size = max(1, min(10, min(self.session.spatial_shape[-2:]) // 16))
        keep_scribbles_ready(self.viewer, img.name)
        layer.mode = "paint"
        self.class_combo.setCurrentIndex(paint_index)
        self._on_class_chosen(paint_index)
        self.autosave_label.setText(f"Autosave: {self.session.store.path}")
        return layer

    def _new_scribbles_layer(self, img: Any) -> Any:
        data = np.zeros(self.session.spatial_shape, dtype=np.uint8)
        restored = self.session.load_scribbles()
        if restored is not None:
            data = restored.astype(np.uint8, copy=False)
        layer = unwrap(self.viewer.add_labels(
            data,
            name=result_names(img.name, [])["scribbles"],
            metadata=role_metadata(img, "scribbles"),
            **geometry_kwargs(img),
        ))
        if restored is not None and restored.any():
            notify_info(f"restored {int(np.count_nonzero(restored))} scribbled voxels from the "
                        "autosave")
        self._watch(layer)
        return layer

    def _watch(self, layer: Any) -> None:
        if self._scribbles_layer is layer:
            return
        self._scribbles_layer = layer
        layer.events.paint.connect(self._autosave)
        layer.events.data.connect(self._autosave)
        layer.events.selected_label.connect(self._on_selected_label)

    # ---------------------------------------------------------------- autosave
    def _autosave(self, event: Any = None) -> None:
        # napari emits ``paint`` before it writes the new values: save once the stroke landed
        # (a short single-shot timer also merges bursts of programmatic paints into one save)
        self._autosave_timer.start()

    def flush_autosave(self) -> None:
        """Write a pending autosave now (called before training and by tests)."""
        if self._autosave_timer.isActive():
            self._autosave_timer.stop()
            self._save_now()

    def _save_now(self) -> None:
        layer = self._scribbles_layer
        if layer is None or self.session.volume is None:
            return
        try:
            if tuple(layer.data.shape) != self.session.spatial_shape:
                return
            self.session.autosave_scribbles(np.asarray(layer.data))
        except Exception as exc:  # noqa: BLE001 - never lose the painting over an autosave
            logger.warning("scribble autosave failed: %s", exc)
            self.autosave_label.setText(f"Autosave failed: {exc}")
