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
