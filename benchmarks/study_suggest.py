"""Rankings compared offline on the predictions ``bench_suggest.py --dump DIR`` saved.

Usage::

    python benchmarks/study_suggest.py DIR [DIR ...]

For every saved prediction (both runs, every round) each ranking variant below suggests 3
slices along the painting axis; the score is the fraction of the wrongly labelled voxels on
them (``error_recall_at_3`` of ``bench_suggest.py``), averaged over the predictions of a
folder. ``random`` (3/Z, the expectation of 3 random slices) and ``oracle`` (the 3 slices with
most errors) bound it. Prints ONE JSON line: ``{folder: {variant: mean recall}}``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit  # noqa: E402

from napari_cnnseg.core.suggest import suggest  # noqa: E402

#: name -> suggest() options ("argmax": rank on the argmax instead of the shown label map)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "all voxels (no stroke-connected reach)": {"stroke_connected": False},
    "all voxels, entropy": {"stroke_connected": False, "signal": "entropy"},
    "entropy": {"signal": "entropy"},
    "argmax instead of shown labels": {"argmax": True},
    "threshold 0": {"threshold": 0.0},
    "threshold 0.4": {"threshold": 0.4},
    "threshold 0.6": {"threshold": 0.6},
    "reach 0.2": {"reach_threshold": 0.2},
    "reach 0.4": {"reach_threshold": 0.4},
    "reach 0.8": {"reach_threshold": 0.8},
    "near 0 (no limit around the shown structure)": {"near": 0},
    "near 1": {"near": 1},
    "near 4": {"near": 4},
    "painted slices weight 1": {"painted_weight": 1.0},
    "painted slices weight 0.25": {"painted_weight": 0.25},
}


def study(folder: Path) -> dict[str, float]:
    """Mean recall at 3 of every variant over the predictions saved in ``folder``."""
    gt = np.load(folder / "truth.npz")["labels"]
    scores: dict[str, list[float]] = {name: [] for name in (*VARIANTS, "random", "oracle")}
    for path in sorted(folder.glob("*_round*.npz")):
        saved = np.load(path)
        probs = saved["probabilities"].astype(np.float32)
        labels, axis = saved["labels"], int(saved["axis"])
        scribbles = saved["scribbles"].astype(np.int64)
        per_slice = (labels != gt).sum(axis=tuple(a for a in range(3) if a != axis))
        total = float(per_slice.sum())
        if total == 0:
            continue
        scores["random"].append(3 / len(per_slice))
        scores["oracle"].append(float(np.sort(per_slice)[::-1][:3].sum()) / total)
        for name, options in VARIANTS.items():
            options = dict(options)
            shown = None if options.pop("argmax", False) else labels
            ranked = suggest(probs, scribbles=scribbles, labels=shown, top=3, axis=axis,
                             **options)
            scores[name].append(float(per_slice[[s.index for s in ranked]].sum()) / total)
    return {name: round(float(np.mean(v)), 4) if v else None for name, v in scores.items()}


def main(argv: list[str] | None = None) -> int:
    folders = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not folders:
        raise SystemExit("usage: study_suggest.py DIR [DIR ...] (folders of bench_suggest --dump)")
    emit({"bench": "study_suggest", **{str(f): study(f) for f in folders}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
