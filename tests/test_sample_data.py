"""Sample data: the phantom is deterministic, multi-class, anisotropic and needs context."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from napari_cnnseg.core.errors import InputError
from napari_cnnseg.core.sample_data import (
    PHANTOM_CLASSES,
    load_brain_t1,
    make_phantom,
    sample_data_dir,
)


def test_phantom_defaults():
    image, labels = make_phantom()
    assert image.shape == labels.shape == (48, 96, 96)
    assert image.array.dtype == np.float32 and labels.array.dtype == np.uint8
    assert image.spacing == labels.spacing == (2.0, 0.5, 0.5)
    assert labels.metadata["class_names"] == PHANTOM_CLASSES == ["background", "organ", "vessel", "lesion"]
    counts = np.bincount(labels.array.ravel(), minlength=4)
    assert len(counts) == 4 and counts.min() > 0  # every class present
    assert np.all(np.isfinite(image.array))


@pytest.mark.parametrize("shape", [(16, 24, 24), (20, 33, 17)])
def test_phantom_small_and_odd_shapes_have_every_class(shape):
    image, labels = make_phantom(shape, spacing=(1.5, 0.75, 0.75), seed=3)
    assert image.shape == shape
    assert set(np.unique(labels.array)) == {0, 1, 2, 3}


def test_phantom_is_deterministic_and_seeded():
    a_img, a_lab = make_phantom((16, 32, 32), seed=1)
    b_img, b_lab = make_phantom((16, 32, 32), seed=1)
    c_img, c_lab = make_phantom((16, 32, 32), seed=2)
    np.testing.assert_array_equal(a_img.array, b_img.array)
    np.testing.assert_array_equal(a_lab.array, b_lab.array)
    assert not np.array_equal(a_lab.array, c_lab.array)


def test_phantom_needs_context():
    """Intensity ranges overlap: the best single threshold between any two adjacent classes
    misclassifies a share of voxels, while classes still differ on average."""
    image, labels = make_phantom()
    img, lab = image.array, labels.array
    means = [float(img[lab == k].mean()) for k in range(4)]
    assert len(set(np.round(means, 2))) == 4
    # lesion (3) vs background (0): their intensity histograms overlap substantially
    lo = np.percentile(img[lab == 3], [5, 95])
    bg_inside = np.mean((img[lab == 0] > lo[0]) & (img[lab == 0] < lo[1]))
    assert bg_inside > 0.2
    # nearest-mean classification by intensity alone is far from perfect
    nearest = np.argmin(np.abs(img[..., None] - np.asarray(means)), axis=-1)
    assert np.mean(nearest == lab) < 0.95


def test_phantom_shapes_are_round_in_physical_space():
    """Lesions are drawn in mm, so their extent in voxels scales with 1/spacing."""
    _, labels = make_phantom((32, 64, 64), spacing=(2.0, 0.5, 0.5), seed=0)
    organ = np.argwhere(labels.array > 0)
    extent_mm = (organ.max(0) - organ.min(0) + 1) * np.asarray(labels.spacing)
    assert extent_mm.max() / extent_mm.min() < 2.5


def test_phantom_rejects_bad_arguments():
    with pytest.raises(InputError, match="shape"):
        make_phantom((4, 32, 32))
    with pytest.raises(InputError, match="spacing"):
        make_phantom((16, 16, 16), spacing=(1.0, -1.0, 1.0))


def test_brain_t1_is_bundled_and_keeps_its_permuted_affine():
    image, mask = load_brain_t1()
    assert image.shape == mask.shape == (62, 128, 128)
    assert mask.metadata["class_names"] == ["background", "brain"]
    assert set(np.unique(mask.array)) == {0, 1}
    raw = sitk.ReadImage(str(sample_data_dir() / "KmeansTest_T1UCharRaw.nii.gz"))
    np.testing.assert_allclose(image.direction, np.reshape(raw.GetDirection(), (3, 3))[::-1, ::-1])
    np.testing.assert_allclose(image.spacing, (3.0, 2.0, 2.0))
    assert (sample_data_dir() / "LICENSE-Apache-2.0.txt").is_file()
    # the brain is brighter on average than the rest of the head + air
    assert image.array[mask.array == 1].mean() > image.array[mask.array == 0].mean()


def test_bundled_copy_matches_shared_data(shared_data):
    for name in ("KmeansTest_T1UCharRaw.nii.gz", "brain_mask.nii.gz"):
        assert (sample_data_dir() / name).read_bytes() == (shared_data / "itk_kmeans_t1" / name).read_bytes()
