"""Bad inputs in the napari docks (under Xvfb): a clear error message, no exception, no layer.

The docks are opened as a user opens them (``viewer.window.add_plugin_dock_widget``) and
driven through their public methods; each case checks the dock's ``last_error`` (what the
notification and status line show), that nothing raised, and that the layer list and the
user's files are unchanged. Listed with the other surfaces in docs/reliability.md.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_bad_inputs_cases import snapshot  # noqa: E402

from napari_cnnseg._widgets import _worker  # noqa: E402
from napari_cnnseg.core.models import build_model, save_model  # noqa: E402
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402

pytestmark = pytest.mark.gui

CLASSES = ["background", "organ", "vessel", "lesion"]
SHAPE = (10, 24, 24)


@pytest.fixture(autouse=True)
def _sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_worker, "SYNC", True)
    monkeypatch.setenv("CNNSEG_DATA_DIR", str(tmp_path / "data"))


def _ckpt(d, change=None, text=None):
    net = build_model("unet", num_classes=4, depth=2, base_width=4)
    save_model(d / "m", net)
    if change is not None or text is not None:
        doc = json.loads((d / "m.json").read_text(encoding="utf-8"))
        (d / "m.json").write_text(text if text is not None else json.dumps(change(doc)))
    return d / "m.json"


#: (id, what, action(seg, fin, viewer, tmp_path) -> return value, expected return, message regex)
GUI_CASES = [
    ("dock-no-image", "Segment with no image open",
     lambda s, f, v, d: (v.layers.clear(), s.segment())[1], None, "image"),
    ("dock-2d-image", "Segment a 2D image layer",
     lambda s, f, v, d: (s.set_image_layer(v.add_image(np.zeros((24, 24), np.float32), name="flat")),
                         s.segment())[1], None, "2D|3D"),
    ("dock-deep-json-checkpoint", "Load checkpoint… with a sidecar nested 100,000 levels deep",
     lambda s, f, v, d: s.load_checkpoint(_ckpt(d, text="[" * 100000 + "]" * 100000)), False, "levels deep"),
    ("dock-pickle-checkpoint", "Load checkpoint… of a pickle (.pt)",
     lambda s, f, v, d: ((d / "m.pt").write_bytes(b"\x80\x04."), s.load_checkpoint(d / "m.pt"))[1], False,
     "pickle"),
    ("dock-huge-checkpoint", "Load checkpoint… asking for 10^13 parameters",
     lambda s, f, v, d: s.load_checkpoint(_ckpt(d, lambda doc: {**doc, "config": {**doc["config"],
                                                                              "base_width": 10**5}})),
     False, "parameters"),
    ("dock-finetune-no-layer", "Fine-tune without a scribbles layer",
     lambda s, f, v, d: f.finetune(steps=1), None, "scribbles"),
    ("dock-finetune-empty", "Fine-tune with an empty scribbles layer",
     lambda s, f, v, d: (f.add_scribbles_layer(), f.finetune(steps=1))[1], None, "paint"),
    ("dock-finetune-value-too-high", "Fine-tune on scribble value 9 with a 4-class model",
     lambda s, f, v, d: (_fill(f.add_scribbles_layer(), 9), f.finetune(steps=1))[1], None, "4 classes|0..4"),
    ("dock-undo-nothing", "Undo with nothing to undo",
     lambda s, f, v, d: f.undo(), None, "undo"),
    ("dock-export-before-segment", "Export labels… before any Segment",
     lambda s, f, v, d: s.export_labels(d / "out.nrrd"), None, "segment|no result|nothing"),
    ("dock-export-under-file", "Export labels… into a path under a file",
     lambda s, f, v, d: (s.segment(), (d / "afile").write_text("x"),
                         s.export_labels(d / "afile" / "out.nrrd"))[2], None, "is a file|cannot write"),
    ("dock-save-model-under-file", "Save model… into a path under a file",
     lambda s, f, v, d: ((d / "afile").write_text("x"), f.save_model(d / "afile" / "m"))[1], None,
     "is a file, not a folder"),
]


def _fill(layer, value):
    layer.data[2, 3:6, 3:6] = value
    return layer


@pytest.mark.parametrize("case", GUI_CASES, ids=[c[0] for c in GUI_CASES])
def test_bad_input_in_the_docks(case, make_napari_viewer, tmp_path):
    _id, _what, action, expected, match = case
    viewer = make_napari_viewer()
    image, _ = make_phantom(shape=SHAPE, spacing=(2.0, 0.5, 0.5), seed=3)
    layer = viewer.add_image(image.array, name="phantom", scale=image.spacing)
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    _, fin = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Fine-tune")
    seg.set_image_layer(layer)
    assert seg.choose_new("unet", CLASSES, depth=2, base_width=4)
    seg.session.predict_options.update(device="cpu", precision="fp32")
    (tmp_path / "user.txt").write_text("the user's own file")
    before_files = snapshot(tmp_path)
    names_before = [lyr.name for lyr in viewer.layers]
    out = action(seg, fin, viewer, tmp_path)
    assert out == expected or (expected is None and not out), f"{_id}: returned {out!r}"
    errors = [e for e in (seg.last_error, fin.last_error) if e]
    assert errors, f"{_id}: no error shown"
    assert any(re.search(match, e, flags=re.I) for e in errors), f"{_id}: {errors}"
    print(f"GUI-CASE|{_id}|{_what}|{errors[-1]}".replace(str(tmp_path), "…"))  # docs/reliability.md
    after_files = snapshot(tmp_path)
    for name, digest in before_files.items():
        assert after_files.get(name) == digest, f"{_id}: {name} changed"
    made = {lyr.name for lyr in viewer.layers} - set(names_before)
    allowed = {"phantom scribbles", "flat"} | ({"phantom labels", "phantom uncertainty"}
                                             | {f"phantom p({c})" for c in CLASSES}
                                             if _id == "dock-export-under-file" else set())
    assert made <= allowed, f"{_id}: layers appeared {made - allowed}"
