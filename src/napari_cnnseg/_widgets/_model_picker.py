"""The model choice of the Segment dock: shipped model, checkpoint file or new untrained net.

A mixin of :class:`~napari_cnnseg._widgets.segment.SegmentWidget` (it uses the dock's
``model_combo``, class editors, ``session`` and ``ctrl``), plus the plain-words description
shown under the picker.

**One click.** Segment should work on a first click. The dock preselects a model when the
session has none (or only one the dock itself preselected and nobody trained yet):

* a bundled sample gets its matching shipped model (:data:`SAMPLE_MODELS`, recognised by the
  source recorded in the layer's geometry metadata, never by layer name);
* any other image gets the last model chosen by hand (a shipped name or a checkpoint file that
  still exists, remembered in ``<data dir>/last_model.json``);
* otherwise the description asks for a model (:data:`CHOOSE_PROMPT`) and Segment stays disabled
  until one is chosen, so the prompt comes before the click instead of an error after it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog

from .._napari_io import GEOMETRY_KEY
from .._session import FAMILIES

logger = logging.getLogger(__name__)

#: shipped model of each bundled sample, by the source its layers record (``cnnseg_geometry``)
SAMPLE_MODELS = {
    "make_phantom": "phantom-unet",  # Plugins > sample > Synthetic 3D phantom
    "KmeansTest_T1UCharRaw.nii.gz": "brain-t1-unet",  # the bundled T1 brain MRI (file name)
}
#: what the description says while no model is chosen (Segment is disabled until then)
CHOOSE_PROMPT = (
    "Choose a model above to segment: a Shipped model made for this kind of image, "
    "Load checkpoint… for one you saved, or a New untrained network (then paint a few "
    "strokes of each class and Fine-tune)."
)


def _list_pretrained() -> list[str]:
    try:
        from ..core.models import list_pretrained

        return list(list_pretrained())
    except Exception:  # noqa: BLE001 - no shipped models yet is not an error
        logger.debug("no shipped models", exc_info=True)
        return []


def sample_model(layer: Any) -> str | None:
    """The shipped model made for ``layer`` if it is a bundled sample (and the model is
    installed), else None. Recognised by the source recorded in the layer's metadata."""
    geometry = ((getattr(layer, "metadata", None) or {}).get(GEOMETRY_KEY) or {})
    source = str(geometry.get("source") or "")
    if not source:
        return None
    name = SAMPLE_MODELS.get(source) or SAMPLE_MODELS.get(Path(source).name)
    return name if name and name in _list_pretrained() else None


def _last_model_file() -> Path:
    from .._autosave import autosave_dir

    return autosave_dir().parent / "last_model.json"


def remember_model(kind: str, value: str) -> None:
    """Record the model the user chose (shipped name or checkpoint path) for the next image."""
    if kind not in ("pretrained", "checkpoint") or not value:
        return
    path = _last_model_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"kind": kind, "value": str(value)}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only data folder only costs the preselection
        logger.warning("could not remember the last model: %s", exc)


def last_used_model() -> tuple[str, str] | None:
    """(kind, value) of the last model chosen by hand, if it can still be loaded."""
    try:
        entry = json.loads(_last_model_file().read_text(encoding="utf-8"))
        kind, value = str(entry["kind"]), str(entry["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if kind == "pretrained" and value in _list_pretrained():
        return kind, value
    if kind == "checkpoint" and Path(value).exists():
        return kind, value
    return None


def plain_description(session: Any) -> str:
    """The model in plain words (the technical description is the tooltip)."""
    if session.model is None:
        return CHOOSE_PROMPT
    family = FAMILIES.get(getattr(session.model, "arch_name", ""), "network")
    rounds = session.tuned_rounds
    taught = f"{rounds} round{'s' if rounds != 1 else ''} of your strokes"
    origin = session.origin  # typed: new / shipped / checkpoint
    if origin.kind == "new":
        first = (f"New {family}, not trained yet: paint a few strokes of each class, then "
                 "Fine-tune." if not rounds else f"New {family}, trained on {taught}.")
    else:
        where = Path(origin.name).name or origin.name
        first = f"{family} from {where}" + (f", improved with {taught}." if rounds else ".")
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
        ok = self._set_model(lambda: self.session.load_model(name), ("pretrained", name))
        if ok:
            remember_model("pretrained", name)
            self._auto_source = None  # chosen by hand: never replaced by a preselection
        return ok

    def load_checkpoint(self, path: str | Path) -> bool:
        """Use the checkpoint at ``path``; a corrupt file gives a notification, not a crash."""
        ok = self._set_model(lambda: self.session.load_model(path), ("checkpoint", str(path)))
        if ok:
            remember_model("checkpoint", str(Path(path).resolve()))
            self._auto_source = None
        return ok

    # ---------------------------------------------------------------- one click
    _auto_source: str | None = None  # model_source of the model this dock preselected

    def _preselected_untouched(self) -> bool:
        s = self.session
        return (self._auto_source is not None and s.model_source == self._auto_source
                and s.tuned_rounds == 0 and not s.can_undo)

    def preselect_model(self) -> str | None:
        """Choose a model without a click (see the module docstring); returns what was chosen.

        Only when the session has no model, or only the one this dock preselected, untouched:
        a model the user picked or trained is never replaced.
        """
        s = self.session
        if self.ctrl.busy or (s.model is not None and not self._preselected_untouched()):
            return None
        layer = self._selected_layer()
        name = sample_model(layer) if layer is not None else None
        entry = ("pretrained", name) if name else (last_used_model() if s.model is None else None)
        if entry is None or (s.model is not None and s.model_source == entry[1]):
            return None
        kind, value = entry
        if not self._set_model(lambda: s.load_model(value), entry):
            return None
        self._auto_source = s.model_source
        why = "made for this sample" if name else "the last one you used"
        shown = value if kind == "pretrained" else Path(value).name
        self.status.setText(f"Model preselected: {shown} ({why}). Segment is ready.")
        logger.info("preselected model %s (%s)", value, why)
        return value

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
        source, origin = self.session.model_source, self.session.origin
        if self.session.model is None or not source:
            self.model_combo.setCurrentIndex(0)
            return
        if origin.kind == "new":
            entry = ("new", origin.name)
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

