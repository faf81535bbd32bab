"""The one scribble check (core.scribbles.check_scribbles) and its users agree."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.scribbles import check_scribbles

GRID = (4, 5, 6)


def _scr(dtype=np.uint8, value=1):
    s = np.zeros(GRID, dtype)
    s[1, 2, 3] = value
    return s


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.5, 1.5, 2.5] * 40).reshape(GRID), "non-integer"),
        (_scr(np.float32, np.nan), "NaN or infinite"),
        (_scr(np.float64, np.inf), "NaN or infinite"),
        (_scr(np.int16, -1), "negative"),
        (_scr(np.uint8, 9), "0..3"),
        (np.zeros(GRID, np.uint8), "no painted voxel"),
        (np.ones((4, 5, 7), np.uint8), "image grid"),
        (np.ones((2, 4, 5, 6), np.uint8), "one 3D label map"),
        (np.ones((5, 6), np.uint8), "one 3D label map"),
        (np.full(GRID, "a"), "numeric"),
        (np.zeros((0, 5, 6), np.uint8), "image grid"),
    ],
)
def test_bad_scribbles_are_refused_with_what_to_do(bad, match):
    with pytest.raises(InputError, match=match):
        check_scribbles(bad, GRID, 3)


def test_good_scribbles_come_back_compact_and_unchanged():
    s = _scr(np.int64, 3)
    out = check_scribbles(s, GRID, 3)
    assert out.dtype == np.uint8 and np.array_equal(out, s)
    whole = _scr(np.float32, 2.0)  # a label map a tool saved as float
    assert check_scribbles(whole, GRID, 3).dtype == np.uint8
    with pytest.raises(InputError, match="integers"):
        check_scribbles(whole, GRID, 3, allow_float=False)
    assert check_scribbles(_scr(bool, True), GRID, 2).max() == 1
    assert check_scribbles(np.zeros(GRID, np.uint8), require_painted=False).max() == 0


def test_finetune_refuses_what_evaluate_refuses():
    """The issue's case: 0.5/1.5/2.5 used to be truncated silently for fine-tuning."""
    from napari_cnnseg.core.models import build_model
    from napari_cnnseg.core.training import finetune

    image = np.random.default_rng(0).random((8, 12, 12)).astype(np.float32)
    scr = np.zeros(image.shape, np.float32)
    scr[2, 2:5, 2:5] = 1.5
    net = build_model("unet", num_classes=2, depth=2, base_width=4)
    with pytest.raises(InputError, match="non-integer"):
        finetune(net, image, scr, steps=1)
