"""Load and leaks: 30 Segment + Fine-tune + Undo cycles in one Session.

Resident memory after cycle 30 must be within 10 % of cycle 5 (after warm-up), and the number
of threads and open file descriptors must not grow. A tiny volume and net and two training
steps per round keep it under a minute on a 2-core machine. The same through the napari docks
under Xvfb: ``tests/test_load_gui.py``.
"""

from __future__ import annotations

import gc
import os
import threading

import numpy as np
import pytest
from _configs import CLASSES, TINY, phantom_strokes

from napari_cnnseg._session import Preview, RegionUpdate, Session
from napari_cnnseg.core.sample_data import make_phantom

CYCLES = 30
#: the cheapest honest round: no best-weights evaluation, the plain background prior
FAST = dict(crop_shape=(4, 12, 12), batch_size=1, keep_best=False, prior="background",
            device="cpu", precision="fp32")


def rss_mb() -> float:
    """Resident set size of this process (VmRSS), MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc (Linux)")
def test_thirty_segment_finetune_undo_cycles_do_not_leak(tmp_path):
    image, labels = make_phantom(shape=(12, 28, 28), spacing=(2.0, 0.5, 0.5), seed=1)
    s = Session(autosave_folder=tmp_path / "autosave")
    s.set_image(image, name="phantom")
    s.new_model("unet", CLASSES, **TINY["unet"])
    s.predict_options.update(device="cpu", precision="fp32")
    scr = phantom_strokes(labels.array)
    rss, threads, fds = [], [], []
    for _ in range(CYCLES):
        s.segment()
        s.autosave_scribbles(scr)
        out = s.finetune(scr, steps=1, preview=Preview(lambda: s.slice_roi(0, 6), steps=1),
                         refresh=False, on_event=lambda e: isinstance(e, RegionUpdate)
                         and s.apply_region(e), **FAST)
        assert out.history.steps == 1
        assert s.undo()
        assert not s.can_undo  # Undo went back to the single starting version
        gc.collect()
        rss.append(rss_mb())
        threads.append(threading.active_count())
        fds.append(open_fds())
    growth = rss[-1] / rss[4] - 1
    print(f"RSS cycle 5 {rss[4]:.1f} MB, cycle 30 {rss[-1]:.1f} MB ({100 * growth:+.1f} %); "
          f"threads {threads[4]} -> {threads[-1]}; fds {fds[4]} -> {fds[-1]}")
    assert growth <= 0.10, f"RSS grew {100 * growth:.1f} % from cycle 5 to 30: {rss}"
    assert threads[-1] <= threads[4], threads
    assert fds[-1] <= fds[4], fds
    assert s.load_scribbles() is not None


def test_undo_stack_is_bounded(tmp_path):
    """Thirty rounds without Undo keep at most ``max_versions`` copies of the weights."""
    image, labels = make_phantom(shape=(12, 28, 28), spacing=(2.0, 0.5, 0.5), seed=1)
    s = Session(autosave_folder=tmp_path, max_versions=3)
    s.set_image(image, name="phantom")
    s.new_model("unet", CLASSES, **TINY["unet"])
    scr = phantom_strokes(labels.array)
    for _ in range(6):
        s.finetune(scr, steps=1, refresh=False, **FAST)
    assert len(s.versions) == 3
    undone = 0
    while s.undo():
        undone += 1
    assert undone == 3


def test_whole_volume_results_are_compact_and_reused_in_place():
    """A session's result maps are float16 (half of float32; steps <= 2^-11, far below 8-bit
    display) and a new whole-volume prediction can write into the arrays the layers already
    show instead of allocating a second set (``Results.for_prediction``)."""
    from napari_cnnseg._results import RESULT_DTYPE, Results

    shape = (4, 6, 5)
    res = Results.empty(shape, 3)
    assert res.probabilities.dtype == RESULT_DTYPE == np.float16
    assert res.uncertainty.dtype == np.float16 and res.labels.dtype == np.uint8
    res.weights_step = 7
    again = Results.for_prediction(res, shape, 3)
    assert again is res and again.weights_step == -1  # same arrays, marked stale
    for other in (Results.for_prediction(res, (4, 6, 6), 3), Results.for_prediction(res, shape, 2),
                  Results.for_prediction(None, shape, 3)):
        assert other is not res and other.probabilities.dtype == np.float16
    old = Results(np.zeros(shape, np.uint8), np.zeros((3, *shape), np.float32),
                  np.zeros(shape, np.float32))
    assert Results.for_prediction(old, shape, 3) is not old  # float32 maps are replaced
    # a float32 region update lands in the float16 maps
    res.probabilities[:, 0] = np.full((3, 6, 5), 1 / 3, np.float32)
    assert abs(float(res.probabilities[0, 0, 0, 0]) - 1 / 3) < 2**-11
