"""ilastik-like pixel classification baseline for the scribble benchmark.

Features: :func:`skimage.feature.multiscale_basic_features` (intensity, edges and texture
at sigmas 0.5 .. 16 voxels, as ilastik's default feature set spans) on the percentile-
normalised volume; classifier: scikit-learn ``RandomForestClassifier`` with 100 trees,
trained on the painted voxels only, predicting every voxel.
"""

from __future__ import annotations

import time

import numpy as np
from skimage.feature import multiscale_basic_features
from sklearn.ensemble import RandomForestClassifier

from napari_cnnseg.core.normalization import normalize

SIGMA_MIN, SIGMA_MAX = 0.5, 16.0


def rf_features(image: np.ndarray) -> np.ndarray:
    """Feature stack (Z, Y, X, F) float32 of a (Z, Y, X) volume."""
    img = normalize(image)
    feats = multiscale_basic_features(img, intensity=True, edges=True, texture=True,
                                      sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX)
    return feats.astype(np.float32, copy=False)


class RandomForestBaseline:
    """Random forest on precomputed features; ``fit`` on scribbles, ``predict`` labels.

    Args:
        features: (Z, Y, X, F) from :func:`rf_features` (computed once per volume).
        seed: random_state of the forest.
    """

    def __init__(self, features: np.ndarray, seed: int = 0) -> None:
        self.features = features
        self.seed = seed
        self.seconds = 0.0

    def fit_predict(self, scribbles: np.ndarray) -> np.ndarray:
        """Train on painted voxels (0 = unlabelled, k = class k-1), predict (Z, Y, X) uint8."""
        t0 = time.perf_counter()
        painted = scribbles > 0
        x = self.features[painted]
        y = scribbles[painted] - 1
        rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=self.seed)
        rf.fit(x, y)
        flat = self.features.reshape(-1, self.features.shape[-1])
        pred = np.empty(flat.shape[0], np.uint8)
        chunk = 1 << 20
        for i in range(0, flat.shape[0], chunk):
            pred[i:i + chunk] = rf.classes_[rf.predict_proba(flat[i:i + chunk]).argmax(1)]
        self.seconds += time.perf_counter() - t0
        return pred.reshape(scribbles.shape)
