"""Where to paint next: ``core.suggest`` on small synthetic maps, ``cnnseg suggest``, bench smoke."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_cnnseg.cli import main
from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.suggest import Suggestion, error_map, suggest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def confident(shape=(10, 32, 32), k=2) -> np.ndarray:
    """(K, Z, Y, X) probabilities sure of class 0 everywhere (0.98), a little noise."""
    rng = np.random.default_rng(0)
    p = np.full((k, *shape), 0.02 / (k - 1), np.float32)
    p[0] = 0.98 - rng.uniform(0, 0.01, shape)
    p[1:] += (1 - p.sum(0)) / (k - 1)
    return p


def blur_box(p: np.ndarray, z: int, ys: slice, xs: slice, p0: float) -> None:
    """Make the model unsure (p[0] = p0, the rest spread evenly) in a box of slice ``z``."""
    k = p.shape[0]
    p[0, z, ys, xs] = p0
    p[1:, z, ys, xs] = (1 - p0) / (k - 1)


def test_the_uncertain_slice_and_region_come_first():
    p = confident()
    blur_box(p, 6, slice(10, 16), slice(20, 26), 0.55)  # large, very unsure
    blur_box(p, 3, slice(1, 3), slice(1, 3), 0.6)  # small
    ranked = suggest(p, top=5)
    assert [s.index for s in ranked] == [6, 3]  # the confident slices are not suggested
    best = ranked[0]
    assert best.axis == 0 and best.score > ranked[1].score > 0
    y0, y1, x0, x1 = best.bbox
    assert y0 <= 10 and 16 <= y1 and x0 <= 20 and 26 <= x1  # the box holds the region
    assert 10 <= best.center[0] < 16 and 20 <= best.center[1] < 26  # centre inside it
    assert best.describe((10, 32, 32)) == (
        f"slice 6 of 10, region around (y {best.center[0]}, x {best.center[1]})")
    assert best.to_dict()["index"] == 6


def test_float16_and_more_classes_give_the_same_ranking():
    p = confident(k=3)
    blur_box(p, 2, slice(4, 12), slice(4, 12), 0.4)
    blur_box(p, 8, slice(4, 8), slice(4, 8), 0.4)
    a = suggest(p, top=2)
    b = suggest(p.astype(np.float16), top=2)
    assert [s.index for s in a] == [s.index for s in b] == [2, 8]


def test_a_wrong_label_map_is_where_the_errors_are():
    """With ``labels`` (what the user sees) a confident model that disagrees with them counts."""
    p = confident()
    labels = np.zeros(p.shape[1:], np.uint8)
    labels[7, 5:15, 5:15] = 1  # the map says 1 where the model is sure of 0
    assert suggest(p, top=1) == []  # the argmax is right everywhere the model is sure
    ranked = suggest(p, labels=labels, top=1)
    assert ranked[0].index == 7
    assert error_map(p, labels)[7, 10, 10] == pytest.approx(1.0)


def test_painted_voxels_do_not_count_and_painted_slices_weigh_less():
    p = confident()
    blur_box(p, 4, slice(0, 10), slice(0, 10), 0.55)
    blur_box(p, 5, slice(0, 9), slice(0, 9), 0.55)  # a little less error than slice 4
    scr = np.zeros(p.shape[1:], np.int64)
    scr[4, 20, 20] = 1  # a stroke on slice 4 outside the region
    assert suggest(p, top=1)[0].index == 4
    assert suggest(p, scribbles=scr, top=1)[0].index == 5  # slice 4 is down-weighted
    assert suggest(p, scribbles=scr, top=1, painted_weight=1.0)[0].index == 4
    scr[4, :10, :10] = 2  # the whole region of slice 4 painted: nothing left there
    assert [s.index for s in suggest(p, scribbles=scr, top=5, painted_weight=1.0)] == [5]


def test_two_classes_only_errors_the_stroke_connected_map_can_show_count():
    """K = 2 with a foreground stroke: unsure tissue far from the painted structure is not
    suggested (the label map would drop it anyway); the structure's unsure border is."""
    p = confident()
    blur_box(p, 2, slice(0, 16), slice(0, 16), 0.55)  # big unsure patch, far from the stroke
    p[0, 7, 20:26, 20:26], p[1, 7, 20:26, 20:26] = 0.05, 0.95  # the painted structure
    blur_box(p, 7, slice(20, 26), slice(26, 29), 0.55)  # its unsure border
    scr = np.zeros(p.shape[1:], np.int64)
    scr[7, 22, 22] = 2  # a foreground stroke on it
    assert suggest(p, top=1)[0].index == 2  # no strokes: every voxel counts
    assert suggest(p, scribbles=scr, top=1, stroke_connected=False)[0].index == 2
    ranked = suggest(p, scribbles=scr, top=5)
    assert [s.index for s in ranked] == [7]
    assert 26 <= ranked[0].center[1] < 29  # the border, not the (certain) structure
    three = np.concatenate([p, np.zeros((1, *p.shape[1:]), np.float32)])  # K = 3: no filter
    assert suggest(three, scribbles=scr, top=1)[0].index == 2


def test_with_a_label_map_only_errors_near_the_shown_structure_count():
    """K = 2, a label map that shows less than the argmax (a graph cut left unsure tissue that
    touches the structure out): errors count within ``near`` voxels of the shown structure."""
    p = confident()
    p[0, 5:8, 20:26, 20:26], p[1, 5:8, 20:26, 20:26] = 0.05, 0.95  # the structure
    blur_box(p, 6, slice(26, 28), slice(20, 26), 0.55)  # its unsure border
    for z in (1, 2, 3, 4):  # unsure tissue touching it (26-connected), far from what is shown
        blur_box(p, z, slice(0, 32), slice(0, 16), 0.55)
        p[:, z, 19:21, 15:21] = p[:, 6, 26:28, 20:26].mean(axis=(1, 2))[:, None, None]
    scr = np.zeros(p.shape[1:], np.int64)
    scr[5, 22, 22] = 2
    labels = np.zeros(p.shape[1:], np.uint8)
    labels[5:8, 20:26, 20:26] = 1  # what the cut shows
    assert suggest(p, scribbles=scr, labels=labels, top=1, near=0)[0].index != 6
    ranked = suggest(p, scribbles=scr, labels=labels, top=1)  # default near = 2
    assert ranked[0].index == 6 and 26 <= ranked[0].center[0] < 28
    with pytest.raises(InputError, match="near"):
        suggest(p, scribbles=scr, labels=labels, near=-1)


def test_seed_scribbles_from_a_model_meta():
    from napari_cnnseg.core.suggest import seed_scribbles

    meta = {"stroke_seeds": {"shape": [4, 8, 8], "classes": {"0": [[0, 1, 2]], "1": [[3, 4, 5],
                                                                                [9, 9, 9]]}}}
    scr = seed_scribbles(meta, (4, 8, 8))
    assert scr[0, 1, 2] == 1 and scr[3, 4, 5] == 2 and int((scr > 0).sum()) == 2
    assert seed_scribbles(meta, (4, 8, 9)) is None  # another grid
    assert seed_scribbles({}, (4, 8, 8)) is None


def test_per_class_ranks_each_class_on_where_it_is_missed():
    p = confident(k=3)
    blur_box(p, 2, slice(0, 10), slice(0, 10), 0.45)  # class 0 shown
    p[1, 2, :10, :10], p[2, 2, :10, :10] = 0.4, 0.15  # slice 2: class 1 probably missed
    p[0, 8, :6, :6], p[1, 8, :6, :6], p[2, 8, :6, :6] = 0.45, 0.0, 0.55  # 8: 2 shown, 0 missed
    ranked = suggest(p, top=1, per_class=True)
    by_class = {s.label: s.index for s in ranked}
    assert by_class[1] == 2 and by_class[0] == 8
    assert ranked == sorted(ranked, key=lambda s: -s.score)
    assert all(s.label is None for s in suggest(p, top=2))
    assert suggest(p, top=1, per_class=True)[0].to_dict()["label"] in (0, 1)


def test_entropy_signal():
    p = confident()
    blur_box(p, 5, slice(0, 8), slice(0, 8), 0.5)
    assert suggest(p, top=1, signal="entropy")[0].index == 5
    with pytest.raises(InputError, match="signal"):
        suggest(p, signal="dropout")


def test_other_axes():
    p = confident(shape=(8, 12, 16))
    blur_box(p, 2, slice(0, 12), slice(9, 10), 0.5)  # a line of x = 9 through slice z = 2
    best = suggest(p, top=1, axis=2)[0]
    assert best.axis == 2 and best.index == 9
    assert best.center[0] == 2  # (z, y) in the x plane
    assert "slice 9 of 16 along x" in best.describe((8, 12, 16))


@pytest.mark.parametrize("kwargs, words", [
    ({"probabilities": np.zeros((8, 8, 8), np.float32)}, "(K, Z, Y, X)"),
    ({"probabilities": np.ones((1, 4, 8, 8), np.float32)}, "at least 2 classes"),
    ({"probabilities": np.full((2, 4, 8, 8), 3.0, np.float32)}, "logits"),
    ({"probabilities": np.full((2, 4, 8, 8), np.nan, np.float32)}, "finite"),
    ({"probabilities": np.zeros((2, 4, 8, 8), np.int64)}, "floats"),
    ({"top": 0}, "top"),
    ({"top": 2.5}, "top"),
    ({"axis": 3}, "axis"),
    ({"threshold": 1.5}, "threshold"),
    ({"scribbles": np.zeros((4, 8, 9), np.int64)}, "same grid"),
    ({"scribbles": np.full((4, 8, 8), -1)}, "negative"),
    ({"scribbles": np.zeros((4, 8, 8), np.float32)}, "integers"),
    ({"labels": np.full((4, 8, 8), 5)}, "2 classes"),
])
def test_bad_inputs_raise_input_error(kwargs, words):
    args = {"probabilities": np.full((2, 4, 8, 8), 0.5, np.float32), **kwargs}
    with pytest.raises(InputError, match=None) as info:
        suggest(args.pop("probabilities"), **args)
    assert words in str(info.value)


def test_suggestion_is_frozen():
    s = Suggestion(axis=0, index=1, center=(2, 3), bbox=(0, 4, 0, 5), score=1.0)
    with pytest.raises(AttributeError):
        s.index = 2  # type: ignore[misc]


# ---- cnnseg suggest -------------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    """A small image and a small 2-class checkpoint."""
    from napari_cnnseg.core.io import Volume, write_volume
    from napari_cnnseg.core.models import build_model, save_model

    rng = np.random.default_rng(0)
    img = write_volume(tmp_path / "img.nii.gz", Volume(
        rng.normal(size=(6, 20, 18)).astype(np.float32), spacing=(3.0, 1.0, 1.0)))
    net = build_model("unet", depth=1, base_width=4, padding="valid", num_classes=2).eval()
    model = save_model(tmp_path / "tiny", net, class_names=["background", "thing"])
    return img, model


def test_cli_prints_the_ranking(tiny, capsys):
    img, model = tiny
    code = main(["suggest", str(img), "-m", str(model), "--top", "2", "--device", "cpu",
                 "--precision", "fp32", "-q"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert 1 <= len(out) <= 2 and out[0].startswith("1. slice ") and " of 6, region around (y " \
        in out[0]
    assert main(["suggest", str(img), "-m", str(model), "--per-class", "--device", "cpu", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines and all(" paint background: slice " in x or " paint thing: slice " in x
                         for x in lines)


def test_cli_json_parses_and_matches_the_engine(tiny, capsys, tmp_path):
    from napari_cnnseg.core.io import Volume, read_volume, write_volume
    from napari_cnnseg.core.models import load_model
    from napari_cnnseg.core.pipeline import segment_volume

    img, model = tiny
    scr = np.zeros((6, 20, 18), np.uint8)
    scr[2, 5:8, 5:8] = 1
    vol = read_volume(img)
    scr_path = write_volume(tmp_path / "scr.nii.gz", Volume(scr, spacing=vol.spacing))
    code = main(["suggest", str(img), "-m", str(model), "--json", "--device", "cpu",
                 "--precision", "fp32", "-q", "--scribbles", str(scr_path), "--top", "3"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shape"] == [6, 20, 18] and doc["slice_numbers"] == "0-based"
    res = segment_volume(vol, load_model(model), device="cpu", precision="fp32")
    expected = suggest(res.probabilities.array, scribbles=scr.astype(np.int64), top=3)
    assert [s["index"] for s in doc["suggestions"]] == [s.index for s in expected]
    for s in doc["suggestions"]:
        assert s["description"].startswith(f"slice {s['index']} of 6")
        assert len(s["bbox"]) == 4 and len(s["center"]) == 2


@pytest.mark.parametrize("extra, words", [
    (["--top", "0"], "--top"),
    (["--scribbles", "MISSING.nii.gz"], "does not exist"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny, capsys, extra, words):
    img, model = tiny
    code = main(["suggest", str(img), "-m", str(model), "-q", "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("cnnseg suggest: error:") and words in err[0]
    assert "Traceback" not in err[0]


def test_cli_scribbles_off_the_grid(tiny, capsys, tmp_path):
    from napari_cnnseg.core.io import Volume, write_volume

    img, model = tiny
    bad = write_volume(tmp_path / "bad.nii.gz", Volume(np.zeros((6, 20, 17), np.uint8)))
    assert main(["suggest", str(img), "-m", str(model), "-q", "--scribbles", str(bad)]) == 2
    assert "not on the image grid" in capsys.readouterr().err


# ---- bench_suggest smoke -------------------------------------------------------------------

@pytest.mark.slow
def test_bench_suggest_quick(tmp_path):
    sys.path.insert(0, str(BENCH))
    from test_benchmarks import check_numbers, run_bench  # noqa: F401 - reuse the runner

    from napari_cnnseg.core.io import write_volume
    from napari_cnnseg.core.sample_data import make_phantom

    image, labels = make_phantom(shape=(16, 32, 32), seed=0)
    img = write_volume(tmp_path / "image.mha", image)
    lab = write_volume(tmp_path / "labels.mha", labels)
    r = run_bench("bench_suggest.py", "--image", str(img), "--labels", str(lab), "--quick")
    assert r["budget"] == "2 steps"
    check_numbers(r, ["error_recall_at_3", "random_recall_at_3", "oracle_recall_at_3",
                      "dice_following_suggestions", "dice_oracle", "dice_ratio", "dice_mean_ratio",
                      "suggest_seconds", "round_seconds", "peak_rss_mb"])
    assert r["quick"] is True and r["rounds"] == 2
    assert 0 <= r["random_recall_at_3"] <= r["oracle_recall_at_3"] <= 1
    assert 0 <= r["error_recall_at_3"] <= r["oracle_recall_at_3"] + 1e-9
    assert all(len(s) <= 3 for s in r["suggested_slices"])


@pytest.mark.slow
def test_study_suggest_on_a_dump(tmp_path):
    sys.path.insert(0, str(BENCH))
    from study_suggest import VARIANTS, study

    gt = np.zeros((6, 16, 16), np.int64)
    gt[3, 4:9, 4:9] = 1
    np.savez_compressed(tmp_path / "truth.npz", labels=gt)
    p = confident(shape=gt.shape)
    blur_box(p, 3, slice(4, 10), slice(4, 10), 0.5)
    labels = np.zeros_like(gt)  # the lesion is missed: every error is on slice 3
    scr = np.zeros_like(gt)
    scr[0, 0, 0] = 1
    np.savez_compressed(tmp_path / "oracle_round1.npz", probabilities=p.astype(np.float16),
                        labels=labels, scribbles=scr, axis=0)
    result = study(tmp_path)
    assert set(VARIANTS) <= set(result) and result["oracle"] == 1.0
    assert result["default"] == 1.0 and result["random"] == pytest.approx(0.5)


def test_clinician_corrects_where_told():
    sys.path.insert(0, str(BENCH))
    from _clinician import correction_strokes

    gt = np.zeros((6, 24, 24), np.int64)
    gt[1:5, 6:18, 6:18] = 1
    pred = np.zeros_like(gt)  # the structure is missed on slices 1-4
    pred[5, 2:8, 2:8] = 1  # and a false positive on slice 5
    none = np.zeros_like(gt)
    told = correction_strokes(gt, pred, none, (1.0, 1.0, 1.0), seed=0, slices=[2, 5])
    assert set(np.flatnonzero(told.any(axis=(1, 2)))) == {2, 5}
    assert (told[2] == 2).any() and (told[5] == 1).any()  # each class's errors on those slices
    per_class = correction_strokes(gt, pred, none, (1.0, 1.0, 1.0), seed=0, slices={1: [3]})
    assert set(np.flatnonzero(per_class.any(axis=(1, 2)))) == {3} and (per_class[3] == 2).any()
    worst = correction_strokes(gt, pred, none, (1.0, 1.0, 1.0), seed=0)
    assert (worst[5] == 1).any() and len(np.flatnonzero((worst == 2).any(axis=(1, 2)))) == 3
