"""The model choice of the Segment dock: shipped model, checkpoint file or new untrained net.

A mixin of :class:`~napari_cnnseg._widgets.segment.SegmentWidget` (it uses the dock's
``model_combo``, class editors, ``session`` and ``ctrl``), plus the plain-words description
shown under the picker.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog

from .._session import FAMILIES

logger = logging.getLogger(__name__)


def _list_pretrained() -> list[str]:
    try:
        from ..core.models import list_pretrained

        return list(list_pretrained())
    except Exception:  # noqa: BLE001 - no shipped models yet is not an error
        logger.debug("no shipped models", exc_info=True)
        return []


def plain_description(session: Any) -> str:
    """The model in plain words (the technical description is the tooltip)."""
    if session.model is None:
        return "No model chosen."
    family = FAMILIES.get(getattr(session.model, "arch_name", ""), "network")
    rounds = session.tuned_rounds
    taught = f"{rounds} round{'s' if rounds != 1 else ''} of your strokes"
    if session.model_source.startswith("new "):
        first = (f"New {family}, not trained yet: paint a few strokes of each class, then "
                 "Fine-tune." if not rounds else f"New {family}, trained on {taught}.")
    else:
        origin = Path(session.model_source).name or session.model_source
        first = f"{family} from {origin}" + (f", improved with {taught}." if rounds else ".")
    names = session.class_names
    lines = [first, f"Finds {', '.join(names[1:])}; everything else is {names[0]}."]
    rf = session.receptive_field()
    if rf is not None and session.volume is not None:
        mm = [r * float(s) for r, s in zip(rf, session.volume.spacing, strict=True)]
        lines.append(f"Judges each voxel from the {mm[1]:.0f} × {mm[2]:.0f} mm around it "
                     f"({rf[0]} slice{'s' if rf[0] != 1 else ''}).")
    return "\n".join(lines)


class ModelPicker:
    """Model-choice methods of the Segment dock (see the module docstring)."""

    # ---------------------------------------------------------------- model choice
    def _refresh_model_choices(self) -> None:
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItem("— choose a model —", ("none", ""))
        for name in _list_pretrained():
            self.model_combo.addItem(f"Shipped: {name}", ("pretrained", name))
        self.model_combo.addItem("Load checkpoint…", ("checkpoint", ""))
        for family, label in FAMILIES.items():
            self.model_combo.addItem(f"New untrained {label}", ("new", family))
        self.model_combo.blockSignals(False)
        self._show_class_editors(False)

    def _show_class_editors(self, show: bool) -> None:
        for w in (self.classes_spin, self.names_edit, self.classes_label, self.names_label):
            w.setVisible(show)

    def _on_model_activated(self, index: int) -> None:
        kind, value = self.model_combo.itemData(index) or ("none", "")
        if kind == "pretrained":
            self.choose_pretrained(value)
        elif kind == "checkpoint":
            path, _ = QFileDialog.getOpenFileName(
                self, "Load checkpoint", self._start_folder(), "Checkpoints (*.safetensors *.json);;All files (*)"
            )
            if path:
                self.load_checkpoint(path)
            else:  # dialog cancelled: show the model still in use
                self._sync_model_entry()
        elif kind == "new":
            self.choose_new(value)

    def _start_folder(self) -> str:
        """Folder of the image's source file ("" = the dialog's default) for file dialogs."""
        source = self.session.source_path
        return str(Path(source).parent) if source else ""

    def _class_names(self) -> list[str]:
        k = self.classes_spin.value()
        names = [n.strip() for n in self.names_edit.text().split(",") if n.strip()]
        names = names[:k] + [f"class {i}" for i in range(len(names), k)]
        if names:
            names[0] = names[0] or "background"
        return names

    def _on_classes_changed(self, value: int) -> None:
        names = self._class_names()
        self.names_edit.setText(", ".join(names))
        self._rebuild_new()

    def _on_names_edited(self) -> None:
        names = [n.strip() for n in self.names_edit.text().split(",") if n.strip()]
        if len(names) >= 2 and len(names) != self.classes_spin.value():
            self.classes_spin.blockSignals(True)
            self.classes_spin.setValue(len(names))
            self.classes_spin.blockSignals(False)
        self._rebuild_new()

    def _rebuild_new(self) -> None:
        kind, value = self.model_combo.currentData() or ("none", "")
        if kind == "new":
            self.choose_new(value)

    def _select_entry(self, kind: str, value: str) -> None:
        for i in range(self.model_combo.count()):
            if self.model_combo.itemData(i) == (kind, value):
                self.model_combo.setCurrentIndex(i)
                return
        if kind == "checkpoint":
            self.model_combo.addItem(f"Checkpoint: {Path(value).name}", (kind, value))
            self.model_combo.setCurrentIndex(self.model_combo.count() - 1)

    def choose_pretrained(self, name: str) -> bool:
        """Use the shipped model ``name``; returns False (and notifies) on failure."""
        return self._set_model(lambda: self.session.load_model(name), ("pretrained", name))

    def load_checkpoint(self, path: str | Path) -> bool:
        """Use the checkpoint at ``path``; a corrupt file gives a notification, not a crash."""
        return self._set_model(lambda: self.session.load_model(path), ("checkpoint", str(path)))

    def choose_new(
        self,
        family: str,
        class_names: list[str] | None = None,
        **config: Any,
    ) -> bool:
        """Use a new untrained network of ``family`` with ``class_names`` (default: the dock's)."""
        if class_names is not None:
            self.classes_spin.blockSignals(True)
            self.classes_spin.setValue(len(class_names))
            self.classes_spin.blockSignals(False)
            self.names_edit.setText(", ".join(class_names))
        names = class_names or self._class_names()
        in_channels = int(config.pop("in_channels", 0)) or self._probe_channels()
        return self._set_model(
            lambda: self.session.new_model(family, names, in_channels=in_channels, **config),
            ("new", family),
        )

    def _probe_channels(self) -> int:
        layer = self._selected_layer()
        if layer is None or layer.data.ndim != 4 or self._selected_channel() is not None:
            return 1
        return int(layer.data.shape[0])

    def _set_model(self, make: Any, entry: tuple[str, str]) -> bool:
        if self.guard_busy():
            return False
        try:
            make()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
            self.report(exc)
            return False
        self._select_entry(*entry)
        self._show_class_editors(entry[0] == "new")
        self.ctrl.model_changed.emit()
        return True

    def _sync_model_entry(self) -> None:
        """Show the session's model in the picker (also when set by script or the other dock)."""
        source = self.session.model_source
        if self.session.model is None or not source:
            self.model_combo.setCurrentIndex(0)
            return
        if source.startswith("new "):
            entry = ("new", source[4:])
        elif any(self.model_combo.itemData(i) == ("pretrained", source)
                 for i in range(self.model_combo.count())):
            entry = ("pretrained", source)
        else:
            entry = ("checkpoint", source)
        if self.model_combo.currentData() != entry:
            self.model_combo.blockSignals(True)
            self._select_entry(*entry)
            self.model_combo.blockSignals(False)
        self._show_class_editors(entry[0] == "new")

