"""Segment dock under Xvfb: manifest, every family, in-place updates, cancel, bad input, export.

Run with ``xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest tests/test_widgets.py``.
Jobs run synchronously (``_worker.SYNC``) except in the one test of the real worker thread.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from _configs import CLASSES, TINY  # noqa: E402

from napari_cnnseg._widgets import SegmentWidget, _worker  # noqa: E402
from napari_cnnseg._widgets._shared import controller_for  # noqa: E402
from napari_cnnseg.core.sample_data import make_phantom  # noqa: E402

pytestmark = pytest.mark.gui

SHAPE = (10, 24, 24)


@pytest.fixture(autouse=True)
def _sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_worker, "SYNC", True)
    monkeypatch.setenv("CNNSEG_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def viewer_and_image(make_napari_viewer):
    viewer = make_napari_viewer()
    image, _ = make_phantom(shape=SHAPE, spacing=(2.0, 0.5, 0.5), seed=3)
    layer = viewer.add_image(
        image.array, name="phantom", scale=image.spacing, translate=(4.0, -2.0, 1.5)
    )
    return viewer, layer


@pytest.fixture
def widget(viewer_and_image, qtbot):
    viewer, layer = viewer_and_image
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    w.set_image_layer(layer)
    return w


def _names(viewer) -> list[str]:
    return [layer.name for layer in viewer.layers]


def _expected_names(image: str = "phantom") -> list[str]:
    return [image] + [f"{image} p({c})" for c in CLASSES] + [
        f"{image} uncertainty",
        f"{image} labels",
    ]


def test_docks_come_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    _, fin = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Fine-tune")
    assert type(seg).__name__ == "SegmentWidget"
    assert type(fin).__name__ == "FinetuneWidget"
    assert seg.session is fin.session  # one session per viewer, shared by both docks


@pytest.mark.parametrize("family", list(TINY))
def test_each_family_makes_the_expected_layers(widget, viewer_and_image, family):
    viewer, image = viewer_and_image
    assert widget.choose_new(family, CLASSES, **TINY[family])
    assert family.split("_")[0][:4] in widget.description.text().lower().replace("-", "")
    widget.segment()
    assert widget.last_error is None
    assert sorted(_names(viewer)) == sorted(_expected_names())
    for layer in viewer.layers[1:]:
        np.testing.assert_allclose(layer.scale, image.scale)
        np.testing.assert_allclose(layer.translate, image.translate)
        assert layer.data.shape == SHAPE
    labels = viewer.layers["phantom labels"]
    assert type(labels).__name__ == "Labels" and labels.data.max() < len(CLASSES)
    assert list(labels.features["class"]) == CLASSES  # hovering shows the class name
    for k, c in enumerate(CLASSES):
        p = viewer.layers[f"phantom p({c})"]
        assert p.blending == "additive" and tuple(p.contrast_limits) == (0.0, 1.0)
        assert p.visible == (k > 0)
        assert 0.0 <= float(p.data.min()) and float(p.data.max()) <= 1.0
    unc = viewer.layers["phantom uncertainty"]
    assert 0.0 <= float(unc.data.min()) and float(unc.data.max()) <= 1.0


@pytest.mark.slow
def test_second_run_updates_layers_in_place(widget, viewer_and_image):
    viewer, _ = viewer_and_image
    widget.choose_new("unet", CLASSES, **TINY["unet"])
    widget.segment()
    before = {layer.name: layer for layer in viewer.layers}
    old_probs = viewer.layers["phantom p(organ)"].data.copy()
    widget.choose_new("multiscale", CLASSES, **TINY["multiscale"])  # other weights
    widget.segment()
    after = {layer.name: layer for layer in viewer.layers}
    assert list(before) == list(after)
    assert all(before[n] is after[n] for n in before)
    assert not np.array_equal(old_probs, viewer.layers["phantom p(organ)"].data)
    # fewer classes: the probability layers follow, the others stay the same objects
    widget.choose_new("unet", ["background", "organ"], **TINY["unet"])
    widget.segment()
    assert sorted(_names(viewer)) == sorted(
        ["phantom", "phantom p(background)", "phantom p(organ)", "phantom uncertainty",
         "phantom labels"]
    )
    assert viewer.layers["phantom labels"] is before["phantom labels"]


def test_cancel_stops_the_job_and_viewer_stays_usable(widget, viewer_and_image, monkeypatch):
    viewer, _ = viewer_and_image
    widget.choose_new("unet", CLASSES, **TINY["unet"])
    original = widget._on_progress

    def cancel_on_first_progress(done, total):
        original(done, total)
        widget.cancel()

    monkeypatch.setattr(widget, "_on_progress", cancel_on_first_progress)
    widget.segment()
    assert _names(viewer) == ["phantom"]  # no layer added or changed
    assert "Cancelled" in widget.status.text() and widget.last_error is None
    assert not controller_for(viewer).busy and widget.segment_btn.isEnabled()
    monkeypatch.setattr(widget, "_on_progress", original)
    widget.segment()  # usable again
    assert sorted(_names(viewer)) == sorted(_expected_names())


def test_cancel_in_a_real_worker_thread(widget, viewer_and_image, qtbot, monkeypatch):
    viewer, _ = viewer_and_image
    monkeypatch.setattr(_worker, "SYNC", False)
    widget.choose_new("unet", CLASSES, **TINY["unet"])
    job = widget.segment()
    assert job is not None and job.worker is not None
    widget.cancel()
    qtbot.waitUntil(lambda: not job.running, timeout=30000)
    assert _names(viewer) == ["phantom"]
    job = widget.segment()  # and a full run through the worker thread works
    qtbot.waitUntil(lambda: not job.running, timeout=60000)
    assert sorted(_names(viewer)) == sorted(_expected_names())


def _error_records():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [r for r in notification_manager.records if r.severity == NotificationSeverity.ERROR]


def test_2d_image_gives_notification_and_no_layer(widget, viewer_and_image):
    viewer, _ = viewer_and_image
    widget.choose_new("unet", CLASSES, **TINY["unet"])
    flat = viewer.add_image(np.random.rand(24, 24).astype(np.float32), name="slice")
    n_errors = len(_error_records())
    widget.set_image_layer(flat)
    assert widget.segment() is None
    assert "2D" in widget.last_error
    assert len(_error_records()) == n_errors + 1
    assert _names(viewer) == ["phantom", "slice"]


def test_wrong_channel_count_gives_notification(widget, viewer_and_image):
    viewer, _ = viewer_and_image
    image = viewer.layers["phantom"].data
    widget.choose_new("unet", CLASSES, **TINY["unet"])  # a 1-channel model
    two = viewer.add_image(np.stack([image, image]), name="two")
    widget.set_image_layer(two)
    assert widget.channel_combo.isVisibleTo(widget)
    widget.channel_combo.setCurrentText("all channels")
    assert widget.segment() is None
    assert "channel" in widget.last_error
    assert _names(viewer) == ["phantom", "two"]
    widget.channel_combo.setCurrentText("channel 1")  # one channel of the two: works
    widget.segment()
    assert widget.last_error is None and "two labels" in viewer.layers


def test_corrupt_checkpoint_gives_notification_and_keeps_model(widget, viewer_and_image, tmp_path):
    viewer, _ = viewer_and_image
    widget.choose_new("unet", CLASSES, **TINY["unet"])
    model = widget.session.model
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    (tmp_path / "broken.json").write_text("{ truncated")
    assert not widget.load_checkpoint(bad)
    assert widget.last_error
    assert widget.session.model is model
    assert _names(viewer) == ["phantom"]


def test_export_labels_and_probabilities_keep_geometry(widget, viewer_and_image, tmp_path):
    from napari_cnnseg.core.io import read_volume

    _, image = viewer_and_image
    widget.choose_new("unet", CLASSES, **TINY["unet"])
    widget.segment()
    out = widget.export_labels(tmp_path / "labels.nii.gz")
    vol = read_volume(out)
    np.testing.assert_array_equal(vol.array, widget.session.results.labels)
    np.testing.assert_allclose(vol.spacing, image.scale, rtol=1e-5)
    np.testing.assert_allclose(vol.origin, image.translate, rtol=1e-5)
    out = widget.export_probabilities(tmp_path / "probs.nrrd")
    probs = read_volume(out, all_channels=True)
    assert probs.array.shape == (len(CLASSES), *SHAPE)
    np.testing.assert_allclose(probs.spacing, image.scale, rtol=1e-5)


def test_worker_sync_switch_and_error_routing(monkeypatch):
    import subprocess
    import sys

    code = "from napari_cnnseg._widgets import _worker; print(_worker.SYNC)"
    for value, expected in (("1", "True"), ("0", "False")):
        env = {**__import__("os").environ, "CNNSEG_SYNC": value}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True)
        assert out.stdout.strip().splitlines()[-1] == expected
    seen = []

    def boom(ctx):
        ctx.progress(1, 2)
        ctx.emit("partial")
        raise ValueError("bad thing")

    job = _worker.start_job(
        boom,
        on_progress=lambda d, t: seen.append(("progress", d, t)),
        on_event=lambda o: seen.append(("event", o)),
        on_done=lambda v: seen.append(("done", v)),
        on_error=lambda e: seen.append(("error", str(e))),
        on_finally=lambda: seen.append(("finally",)),
    )
    assert not job.running
    assert seen == [("progress", 1, 2), ("event", "partial"), ("error", "bad thing"), ("finally",)]


def test_plain_description_and_dialogs_beside_the_source(widget, viewer_and_image, tmp_path):
    from napari_cnnseg.core.io import Volume, write_volume

    widget.choose_new("unet", CLASSES, **TINY["unet"])
    text = widget.description.text()
    assert "not trained yet" in text and "Finds organ, vessel, lesion" in text
    assert "receptive" not in text and "parameters" not in text
    assert widget.description.toolTip() == widget.session.describe_model()  # the technical one
    viewer, _ = viewer_and_image
    path = write_volume(tmp_path / "scan.nrrd", Volume(np.ones(SHAPE, np.float32)))
    [layer] = viewer.open(str(path), plugin="napari-cnnseg")
    widget.set_image_layer(layer)
    assert widget.default_path("labels") == str(tmp_path / "scan_labels.nrrd")
