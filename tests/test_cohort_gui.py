"""Apply to folder… in the Segment dock (under Xvfb): the current model over a folder, Cancel.

Run with ``xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m pytest tests/test_cohort_gui.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from napari_cnnseg._widgets import _worker  # noqa: E402
from napari_cnnseg._widgets.apply_folder import ApplyFolderPanel, add_apply_folder  # noqa: E402
from napari_cnnseg.core.cohort import CohortOptions, segment_cohort  # noqa: E402
from napari_cnnseg.core.io import Volume, read_volume, write_volume  # noqa: E402

pytestmark = pytest.mark.gui
CLASSES = ["background", "organ", "vessel"]


@pytest.fixture(autouse=True)
def _sync(monkeypatch, tmp_path):
    monkeypatch.setattr(_worker, "SYNC", True)
    monkeypatch.setenv("CNNSEG_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    scans = tmp_path / "scans"
    for i in range(3):
        write_volume(scans / f"s{i}.nii.gz",
                     Volume(rng.normal(size=(8, 20 + i, 18)).astype(np.float32), spacing=(2.0, 1.0, 1.0)))
    return scans


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).normal(size=(8, 20, 18)).astype(np.float32), name="img")
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    assert isinstance(getattr(seg, "apply_folder", None), ApplyFolderPanel)  # the dock has it
    panel = add_apply_folder(seg)  # a no-op now
    assert add_apply_folder(seg) is panel and seg.apply_folder is panel
    assert seg.choose_new("unet", CLASSES, depth=1, base_width=4)
    return seg, panel


def test_apply_to_folder_writes_what_the_api_writes(dock, folder, tmp_path):
    seg, panel = dock
    assert panel.apply_btn.text() == "Apply to folder…" and not panel.cancel_btn.isEnabled()
    panel.run(folder, tmp_path / "out")
    res = panel.last_result
    assert [r["status"] for r in res.records] == ["done"] * 3
    assert "3 segmented" in panel.status.text() and panel.progress.value() == 3
    assert panel.apply_btn.isEnabled() and not panel.cancel_btn.isEnabled()
    opts = CohortOptions(device=seg.device_combo.currentText(),
                         precision=seg.precision_combo.currentText())
    ref = segment_cohort(folder, seg.session.model, tmp_path / "ref", opts)
    for r in ref.records:
        name = r["outputs"][0].rsplit("/", 1)[-1]
        np.testing.assert_array_equal(read_volume(tmp_path / "out" / name).array,
                                      read_volume(tmp_path / "ref" / name).array)
    panel.run(folder, tmp_path / "out")  # again: every volume is already done
    assert "3 already done" in panel.status.text()


def test_cancel_in_a_real_worker_thread_keeps_finished_volumes(dock, folder, tmp_path, qtbot,
                                                                monkeypatch):
    _, panel = dock
    monkeypatch.setattr(_worker, "SYNC", False)
    seen = []
    real = panel._on_progress

    def progress(done, total):  # cancel once the first volume is finished
        seen.append(done)
        real(done, total)
        if done == 1:
            panel.cancel()

    monkeypatch.setattr(panel, "_on_progress", progress)
    job = panel.run(folder, tmp_path / "out")
    assert job is not None and job.worker is not None and panel.cancel_btn.isEnabled()
    qtbot.waitUntil(lambda: not job.running, timeout=60000)
    qtbot.waitUntil(lambda: panel.apply_btn.isEnabled(), timeout=10000)
    assert "Cancelled" in panel.status.text() or panel.last_result is not None
    assert (tmp_path / "out" / "s0_labels.nii.gz").exists()


def test_no_model_is_one_clear_message(make_napari_viewer, folder, tmp_path):
    viewer = make_napari_viewer()
    _, seg = viewer.window.add_plugin_dock_widget("napari-cnnseg", "Segment")
    panel = add_apply_folder(seg)
    seg.session.model = None
    assert panel.run(folder, tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
