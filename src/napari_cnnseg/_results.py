"""Result containers of a session (Qt-free): whole-volume results, live region updates,
fine-tuning outcome. Uncertainty is :func:`napari_cnnseg.core.pipeline.normalized_entropy`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .core.pipeline import normalized_entropy  # noqa: F401  (re-exported for the session)

Roi = tuple[slice, slice, slice]

#: dtype of the probability and uncertainty maps a session keeps (and napari shows): 2 bytes
#: a value instead of 4; values in [0, 1] keep 3 significant digits (steps of at most 2^-11),
#: far below the 8-bit display depth (1/255), and labels come from the argmax either way
RESULT_DTYPE = np.float16


@dataclass
class Results:
    """Outputs of a whole-volume prediction, on the image grid (Z, Y, X).

    Attributes:
        labels: (Z, Y, X) uint8 class indices (argmax).
        probabilities: (K, Z, Y, X) floats in [0, 1] (:data:`RESULT_DTYPE` when the session
            made them; float32 from older code paths).
        uncertainty: (Z, Y, X) normalised entropy in [0, 1], same dtype rule.
        weights_step: model-weights counter at prediction time (see :class:`Session`).
        geometry: the labels as a ``core.io.Volume`` (spacing, origin, direction and class
            names of the image they were predicted on), or None for placeholder results.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    weights_step: int = 0
    geometry: Any = None

    @classmethod
    def empty(cls, shape: tuple[int, int, int], num_classes: int) -> Results:
        """All background, zero probabilities: results to fill in region by region."""
        from .core.pipeline import labels_dtype

        return cls(np.zeros(shape, dtype=labels_dtype(num_classes)),
                   np.zeros((num_classes, *shape), dtype=RESULT_DTYPE),
                   np.zeros(shape, dtype=RESULT_DTYPE), weights_step=-1)

    @classmethod
    def for_prediction(cls, old: Results | None, shape: tuple[int, int, int],
                       num_classes: int) -> Results:
        """Arrays to predict a whole (Z, Y, X) volume into: ``old`` itself when its arrays fit
        (same grid, class count and dtypes; written in place, so the layers showing them need
        no second copy of the volume's results), else new :data:`RESULT_DTYPE` ones (drop
        ``old`` before calling, or both sets are alive at once). Marked stale
        (``weights_step`` -1) until the caller sets the step of the new prediction."""
        from .core.pipeline import labels_dtype

        fits = (old is not None and old.labels.shape == tuple(shape)
                and old.probabilities.shape == (num_classes, *shape)
                and old.labels.dtype == labels_dtype(num_classes)
                and old.probabilities.dtype == RESULT_DTYPE and old.uncertainty.dtype == RESULT_DTYPE)
        res = old if fits else cls.empty(tuple(shape), num_classes)  # type: ignore[assignment]
        res.weights_step = -1
        return res  # type: ignore[return-value]

    def apply(self, update: RegionUpdate) -> bool:
        """Write a region prediction into these arrays in place.

        Returns:
            False (and changes nothing) if the class counts differ or these results are newer
            than the update.
        """
        if update.weights_step < self.weights_step:
            return False
        if update.probabilities.shape[0] != self.probabilities.shape[0]:
            return False
        self.labels[update.roi] = update.labels
        self.probabilities[(slice(None), *update.roi)] = update.probabilities
        self.uncertainty[update.roi] = update.uncertainty
        self.weights_step = update.weights_step
        return True


@dataclass
class RegionUpdate:
    """A prediction of part of the volume (e.g. the visible slice) with the current weights.

    Attributes:
        roi: three slices (z, y, x) into the image grid.
        labels, probabilities, uncertainty: as in :class:`Results`, shaped like the roi.
        weights_step: model-weights counter at prediction time.
    """

    roi: Roi
    labels: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    weights_step: int = 0


@dataclass
class FinetuneOutcome:
    """What :meth:`Session.finetune` did.

    Attributes:
        history: the ``FinetuneHistory`` filled by ``core.training.finetune`` (also when
            stopped early).
        stopped: True if the user stopped training early (the weights reached so far are kept).
        results: whole-volume results with the new weights (None if not refreshed).
        region_updates: number of live region refreshes done during training.
        steps: training steps done (also when stopped early).
        losses: training loss of every step.
    """

    history: Any = None
    stopped: bool = False
    results: Results | None = None
    region_updates: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
