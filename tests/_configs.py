"""Small configurations shared by the session and widget tests (fast on a 2-core CPU)."""

from __future__ import annotations

#: a tiny network of every family, built with ``build_model(name, **TINY[name])``
TINY = {
    "patch_classifier": dict(patch_size=9, widths=[4, 4], pool_after=[], fc_widths=[8]),
    "unet": dict(depth=2, base_width=4),
    "encoder_decoder": dict(depth=2, base_width=4),
    "multiscale": dict(widths=[4, 4], head_widths=[8]),
    "feature_net": dict(sigmas=[[0, 1, 1], [0.5, 2, 2]], width=8),
}
#: the phantom's classes (``make_phantom``)
CLASSES = ["background", "organ", "vessel", "lesion"]


def phantom_strokes(labels, slices=(3, 8)):
    """A few thin strokes per class on ``slices`` of a (Z, Y, X) label map (value k = class
    k-1): about a twelfth of each class's voxels on those slices, uint8."""
    import numpy as np

    scr = np.zeros(labels.shape, dtype=np.uint8)
    for z in slices:
        for c in np.unique(labels[z]):
            ys, xs = np.nonzero(labels[z] == c)
            pick = slice(None, None, max(1, len(ys) // 12))
            scr[z, ys[pick], xs[pick]] = c + 1
    return scr
