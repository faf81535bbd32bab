"""Smoke tests of every script in ``benchmarks/``, so that none of them can rot unnoticed.

Each script runs in a subprocess in its smoke mode (``--quick``: small sizes, a few steps), and
the ONE JSON line it prints is checked for the keys its issue names (issues 4, 5 and 7), finite
where numeric. Correctness is asserted only where it is cheap and deterministic (tiled vs
one-pass, ours vs MONAI in fp32, dense vs per-patch); timings are never asserted: the numbers
of a smoke run are meaningless.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
#: generous: the smoke runs take seconds, but the CI machine may be busy
TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def run_bench(script: str, *args: str) -> dict[str, Any]:
    """Run ``benchmarks/<script>`` with ``args``; the JSON object of its last stdout line."""
    cmd = [sys.executable, str(BENCH / script), *args]
    # one thread: a smoke run needs no speed, and two OpenMP threads spin-wait for ages on a
    # 2-core machine that is busy with anything else (e.g. a real benchmark running beside)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S,
                          env=env)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited with {proc.returncode}\n"
        f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert lines, f"{script} printed nothing on stdout\nstderr:\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict), lines[-1]
    return result


def check_numbers(result: dict[str, Any], keys: list[str]) -> None:
    """Every key is present and a finite number (not a bool, not None)."""
    missing = [k for k in keys if k not in result]
    assert not missing, f"missing keys {missing} in {result}"
    for k in keys:
        v = result[k]
        assert isinstance(v, (int, float)) and not isinstance(v, bool), f"{k}={v!r}"
        assert math.isfinite(v), f"{k}={v!r}"


def test_bench_inference_quick():
    pytest.importorskip("monai")
    r = run_bench("bench_inference.py", "--quick")
    check_numbers(r, [
        "monai_voxels_per_s", "fp32_voxels_per_s", "bf16_voxels_per_s", "speedup_fp32",
        "speedup_bf16", "max_abs_diff_fp32_vs_monai", "argmax_agreement_bf16",
        "conv_peak_gflops", "fraction_of_peak_fp32", "peak_rss_mb",
    ])
    assert isinstance(r["device"], str) and r["device"]
    assert r["quick"] is True
    # the same network, Gaussian blending, fp32: our tiling reproduces MONAI's
    assert r["max_abs_diff_fp32_vs_monai"] <= 1e-4
    assert 0.0 <= r["argmax_agreement_bf16"] <= 1.0


def test_bench_valid_tiling_quick():
    r = run_bench("bench_valid_tiling.py", "--quick")
    check_numbers(r, ["max_abs_diff", "tiled_voxels_per_s", "one_pass_voxels_per_s",
                      "argmax_agreement", "peak_rss_mb"])
    assert r["tiles"] > 1  # the smoke run really tiles
    assert r["max_abs_diff"] <= 1e-5  # exact overlap-tile (issue 5)


def test_bench_memory_quick():
    r = run_bench("bench_memory.py", "--quick")
    check_numbers(r, ["peak_rss_mb", "voxels_per_s", "input_gb"])
    assert r["probabilities_sum_to_one"] is True


def test_bench_dense_quick():
    r = run_bench("bench_dense.py", "--quick")
    check_numbers(r, ["naive_voxels_per_s", "dense_voxels_per_s", "speedup", "max_abs_diff",
                      "peak_rss_mb"])
    assert r["max_abs_diff"] <= 1e-5  # dense == per-patch (issue 4)


def test_bench_finetune_quick():
    r = run_bench("bench_finetune.py", "--quick")
    check_numbers(r, ["crops_per_s", "plain_crops_per_s", "speedup", "conv_peak_gflops",
                      "fraction_of_peak"])
    assert r["quick"] is True


def test_bench_refresh_quick():
    r = run_bench("bench_refresh.py", "--quick")
    check_numbers(r, ["first_slice_s", "whole_volume_s", "train_s", "steps", "slice_refreshes"])
    assert r["steps"] >= 1 and r["slice_refreshes"] >= 1
    assert r["quick"] is True


def test_bench_scribbles_quick(tmp_path):
    pytest.importorskip("sklearn")
    from napari_cnnseg.core.io import write_volume
    from napari_cnnseg.core.sample_data import make_phantom

    image, labels = make_phantom(shape=(16, 32, 32), seed=0)
    img_path = write_volume(tmp_path / "image.mha", image)
    lab_path = write_volume(tmp_path / "labels.mha", labels)
    r = run_bench("bench_scribbles.py", "--image", str(img_path), "--labels", str(lab_path),
                  "--quick")
    check_numbers(r, ["dice_cnn", "dice_rf", "mean_cnn", "mean_rf", "seconds_cnn", "seconds_rf",
                      "rounds", "labelled_voxels_cnn", "labelled_voxels_rf", "features_seconds",
                      "peak_rss_mb_cnn"])
    rounds = r["rounds"]
    assert rounds == 2 and r["quick"] is True
    for key in ("dice_cnn_rounds", "dice_rf_rounds"):
        values = r[key]
        assert isinstance(values, list) and len(values) == rounds, f"{key}={values!r}"
        assert all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in values), values
    assert r["dice_cnn"] == r["dice_cnn_rounds"][-1]
    assert r["dice_rf"] == r["dice_rf_rounds"][-1]
    assert r["labelled_voxels_cnn"] > 0 and r["user"] == "clinician"
    assert len(r["refresh_seconds"]) == rounds and len(r["steps_cnn_rounds"]) == rounds


def test_clinician_user_paints_inside_the_truth_and_corrects_its_own_errors():
    sys.path.insert(0, str(BENCH))
    from _clinician import correction_strokes, initial_strokes
    from _synthetic_lesions import insert_lesion

    from napari_cnnseg.core.sample_data import load_brain_t1

    vol, _ = load_brain_t1()
    image, mask = insert_lesion(vol.array, vol.spacing, seed=2)
    assert mask.sum() > 10 and not np.array_equal(image, vol.array)
    labels = mask.astype(np.int64)
    scr = initial_strokes(labels, vol.spacing, seed=0)
    np.testing.assert_array_equal(scr, initial_strokes(labels, vol.spacing, seed=0))  # seeded
    painted = scr > 0
    np.testing.assert_array_equal(scr[painted] - 1, labels[painted])  # always the true class
    assert (scr == 2).any() and (scr == 1).sum() > (scr == 2).sum()
    empty = np.zeros_like(labels)  # a method that found nothing gets lesion strokes
    more = correction_strokes(labels, empty, scr, vol.spacing, seed=1)
    assert (more == 2).sum() > (scr == 2).sum() and (more[scr > 0] == scr[scr > 0]).all()


def test_bench_scribbles_compacts_sparse_label_values():
    sys.path.insert(0, str(BENCH))
    from bench_scribbles import compact_labels

    sparse = np.array([[[0, 3], [7, 3]]])
    np.testing.assert_array_equal(compact_labels(sparse), [[[0, 1], [2, 1]]])
    no_background = np.array([[[2, 5], [5, 9]]])
    np.testing.assert_array_equal(compact_labels(no_background), [[[1, 2], [2, 3]]])
    dense = np.array([[[0, 1], [2, 1]]])
    assert compact_labels(dense) is dense
