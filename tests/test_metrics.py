"""Dice and 95% Hausdorff: invariants against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.metrics import (
    confusion_matrix,
    dice_per_class,
    hausdorff95,
    mean_foreground_dice,
)


def _random_labels(shape, k, seed):
    return np.random.default_rng(seed).integers(0, k, size=shape)


def test_dice_identical_is_one_and_matches_set_formula():
    a = _random_labels((9, 11, 13), 3, 1)
    b = _random_labels((9, 11, 13), 3, 2)
    assert dice_per_class(a, a) == {0: 1.0, 1: 1.0, 2: 1.0}
    got = dice_per_class(a, b)
    for c in range(3):
        p, g = a == c, b == c
        assert got[c] == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))


def test_dice_is_symmetric_and_absent_class_counts_as_perfect():
    a = _random_labels((8, 8, 8), 2, 3)
    b = _random_labels((8, 8, 8), 2, 4)
    assert dice_per_class(a, b) == dice_per_class(b, a)
    assert dice_per_class(a, b, num_classes=4)[3] == 1.0
    with pytest.raises(InputError, match="num_classes"):
        dice_per_class(a, b, num_classes=1)


def test_confusion_matrix_counts_every_voxel():
    a = _random_labels((5, 6, 7), 4, 5)
    b = _random_labels((5, 6, 7), 4, 6)
    cm = confusion_matrix(a, b)
    assert cm.sum() == a.size
    assert cm[2, 1] == int(((b == 2) & (a == 1)).sum())


def test_mean_foreground_dice_ignores_background_and_absent_classes():
    gt = np.zeros((4, 10, 10), np.uint8)
    gt[:, :5] = 1
    pred = gt.copy()
    pred[:, 5:7] = 1
    d = dice_per_class(pred, gt)
    assert mean_foreground_dice(pred, gt, num_classes=3) == pytest.approx(d[1])


def test_hausdorff_zero_for_identical_and_shift_in_physical_units():
    gt = np.zeros((12, 20, 20), np.uint8)
    gt[3:9, 5:15, 5:15] = 1
    assert hausdorff95(gt, gt)[1] == 0.0
    shifted = np.roll(gt, 2, axis=2)
    # a box shifted by 2 voxels along x: most surface voxels are 0 away, the far faces 2 away
    hd = hausdorff95(shifted, gt, spacing=(3.0, 1.0, 0.5))[1]
    hd_iso = hausdorff95(shifted, gt)[1]
    assert hd == pytest.approx(hd_iso * 0.5)
    assert 0 < hd_iso <= 2.0


def test_hausdorff_matches_brute_force_on_small_masks():
    rng = np.random.default_rng(0)
    a = rng.random((6, 7, 8)) < 0.3
    b = rng.random((6, 7, 8)) < 0.3
    spacing = (2.0, 1.0, 1.5)
    from scipy import ndimage

    def surface(m):
        return m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1))

    pa = np.argwhere(surface(a)) * spacing
    pb = np.argwhere(surface(b)) * spacing
    d = np.sqrt(((pa[:, None] - pb[None]) ** 2).sum(-1))
    want = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    got = hausdorff95(a.astype(int), b.astype(int), spacing=spacing)[1]
    assert got == pytest.approx(want)


def test_hausdorff_empty_conventions():
    a = np.zeros((4, 4, 4), int)
    b = a.copy()
    b[1, 1, 1] = 1
    assert hausdorff95(a, b)[1] == float("inf")
    assert hausdorff95(a, a, num_classes=2)[1] == 0.0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="shape"):
        dice_per_class(np.zeros((2, 3, 4), int), np.zeros((2, 3, 5), int))
    with pytest.raises(InputError, match="probabilities"):
        dice_per_class(np.full((2, 2, 2), 0.5), np.zeros((2, 2, 2), int))
    with pytest.raises(InputError, match="spacing"):
        hausdorff95(np.zeros((2, 2, 2), int), np.zeros((2, 2, 2), int), spacing=(1, 0, 1))
