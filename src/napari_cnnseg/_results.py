"""Result containers of a session (Qt-free): whole-volume results, live region updates,
fine-tuning outcome. Uncertainty is :func:`napari_cnnseg.core.pipeline.normalized_entropy`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .core.pipeline import normalized_entropy  # noqa: F401  (re-exported for the session)

Roi = tuple[slice, slice, slice]


@dataclass
class Results:
    """Outputs of a whole-volume prediction, on the image grid (Z, Y, X).

    Attributes:
        labels: (Z, Y, X) uint8 class indices (argmax).
        probabilities: (K, Z, Y, X) float32 in [0, 1].
        uncertainty: (Z, Y, X) float32 normalised entropy in [0, 1].
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
                   np.zeros((num_classes, *shape), dtype=np.float32),
                   np.zeros(shape, dtype=np.float32), weights_step=-1)

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
