"""Qt-free model of an interactive segmentation session (what the napari docks drive).

A :class:`Session` holds the image being segmented (a :class:`~napari_cnnseg.core.io.Volume`),
the current network with a stack of previous weight versions (for Undo), the prediction
settings, the last results (labels, per-class probabilities, uncertainty) and the scribble
autosave of the image. Its methods take plain ``progress(done, total)`` / ``cancel()``
callables and never touch napari, so the same code path runs in the GUI, in the tests, in the
demo and in ``benchmarks/bench_refresh.py``::

    session = Session()
    session.set_image(volume, name="t1")
    session.load_model("brain_t1_unet")      # shipped name or checkpoint path
    results = session.segment()               # whole volume
    session.finetune(scribbles, seconds=10,   # previews of slice 20, then the whole volume
                     preview=Preview(lambda: session.slice_roi(0, 20)), on_event=print)
    session.undo()                            # previous weights

Threading: :meth:`segment`, :meth:`predict_region` and :meth:`finetune` may run in a worker
thread; :meth:`apply_region` writes into the result arrays (which the GUI shows as layer
data) and belongs to the thread that owns those arrays (the GUI thread).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._autosave import ScribbleStore, image_key
from ._model_info import FAMILIES, ModelOrigin, build_new_model, describe_model, receptive_field
from ._results import (  # noqa: F401 - re-exported: the docks and tests import them from here
    FinetuneOutcome,
    RegionUpdate,
    Results,
    Roi,
    normalized_entropy,
)
from ._session_training import (  # noqa: F401 - re-exported: the docks import them from here
    LIVE_REFRESH_MAX_SHARE,
    LiveTraining,
    Preview,
    Refreshing,
    SessionEventFn,
    run_finetune,
    warm_up_training,
)
from ._versions import WeightVersions
from .core.errors import InputError
from .core.jobs import CancelFn, ProgressFn
from .core.pipeline import labels_dtype

logger = logging.getLogger(__name__)

__all__ = ["FAMILIES", "LIVE_REFRESH_MAX_SHARE", "LiveTraining", "Session", "warm_up_training"]


class Session:
    """State of one interactive session: image, model (+ undo versions), settings, results.

    Args:
        autosave_folder: where scribbles are autosaved; default the per-user data folder
            (see :mod:`napari_cnnseg._autosave`).
        max_versions: how many previous model versions Undo keeps.
    """

    def __init__(
        self, *, autosave_folder: str | os.PathLike | None = None, max_versions: int = 20
    ) -> None:
        self.volume: Any = None  # core.io.Volume
        self.image_name = "image"
        self.source_path: str | None = None
        self.model: Any = None  # torch.nn.Module
        self.model_source = ""
        self.results: Results | None = None
        #: keyword arguments for ``core.inference.predict`` (None = automatic)
        self.predict_options: dict[str, Any] = {
            "device": "auto",
            "precision": "auto",
            "tile_shape": None,
            "overlap": None,
            "batch_size": None,
        }
        self.autosave_folder = autosave_folder
        #: previous weights (Undo) and the weights / rounds counters
        self.versions = WeightVersions(max_versions)
        self._untrained = False  # the current model was built untrained (see model_is_fresh)
        #: labels keep only the regions of a painted class that touch its strokes (after
        #: fine-tuning; see ``segment``)
        self.keep_stroke_components = True
        self._store: ScribbleStore | None = None

    # ------------------------------------------------------------------ image
    def set_image(self, volume: Any, *, name: str = "image", source_path: str | None = None) -> None:
        """Use ``volume`` (a core.io Volume, (Z, Y, X) or (C, Z, Y, X)) as the session image.

        Raises:
            InputError: the array is not 3D/4D or has an empty axis.
        """
        shape = tuple(volume.array.shape)
        if len(shape) not in (3, 4):
            raise InputError(
                f"expected a 3D image (Z, Y, X) or a multichannel one (C, Z, Y, X), got shape "
                f"{shape}; open a volume (not a single 2D slice) or pick one channel"
            )
        if min(shape) < 1:
            raise InputError(f"the image {name!r} is empty (shape {shape})")
        same = (
            self.volume is not None
            and tuple(self.volume.array.shape) == shape
            and self.volume.array is volume.array
        )
        self.volume = volume
        self.image_name = name
        self.source_path = str(source_path) if source_path else None
        if not same:
            self.results = None
            self._store = None

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(Z, Y, X) size of the image grid."""
        self._require_image()
        return tuple(int(s) for s in self.volume.array.shape[-3:])  # type: ignore[return-value]

    @property
    def num_channels(self) -> int:
        """Image channels (1 for a (Z, Y, X) image)."""
        self._require_image()
        return 1 if self.volume.array.ndim == 3 else int(self.volume.array.shape[0])

    def _require_image(self) -> None:
        if self.volume is None:
            raise InputError("no image chosen: open a 3D image and pick it in the Segment dock")

    # ------------------------------------------------------------------ model
    def set_model(self, model: Any, *, source: str = "", untrained: bool = False) -> None:
        """Use ``model`` (any network ``core.inference.predict`` accepts); clears Undo.

        ``untrained``: the model's weights are freshly initialised (``new_model``), so its
        first fine-tuning uses the fresh-net recipe (:attr:`model_is_fresh`).
        """
        self.model = model
        self.model_source = source
        self._untrained = bool(untrained)
        self.versions.reset()

    @property
    def model_is_fresh(self) -> bool:
        """True while the model is one this session built untrained (``new_model``) and not yet
        fine-tuned (or undone back to that state): the fresh-net recipe applies only then."""
        return self._untrained and self.versions.tuned == 0

    def load_model(self, name_or_path: str | os.PathLike) -> Any:
        """Load a shipped model by name or a checkpoint file; raises CheckpointError if bad."""
        from .core.models import resolve_model

        model = resolve_model(str(name_or_path))
        self.set_model(model, source=str(name_or_path))
        return model

    def new_model(
        self,
        family: str,
        class_names: list[str] | None = None,
        *,
        num_classes: int | None = None,
        in_channels: int | None = None,
        **config: Any,
    ) -> Any:
        """Build an untrained network of ``family`` (see :data:`FAMILIES`).

        Args:
            family: registry name: patch_classifier, unet, encoder_decoder or multiscale.
            class_names: one name per class, background first; default generic names.
            num_classes: number of classes if ``class_names`` is not given (default 2).
            in_channels: image channels; default the session image's (or 1).
            **config: architecture settings passed to ``build_model``, over the
                interactive defaults of :func:`~.core.models.interactive_config`.
        """
        spacing = tuple(self.volume.spacing) if self.volume is not None else None
        if in_channels is None:
            in_channels = self.num_channels if self.volume is not None else 1
        model = build_new_model(family, class_names, num_classes=num_classes,
                                in_channels=int(in_channels), spacing=spacing, **config)
        self.set_model(model, source=f"new {family}", untrained=True)
        return model

    @property
    def origin(self) -> ModelOrigin:
        """Where the current model comes from (new / shipped / checkpoint) and how often it
        was fine-tuned here; None-like ``ModelOrigin("none")`` without a model."""
        if self.model is None:
            return ModelOrigin("none", "")
        return ModelOrigin.of(self.model_source, untrained=self._untrained, tuned=self.versions.tuned)

    def prepare_features(self) -> float:
        """Compute the fixed filters of a ``feature_net`` over the image now (cached for the
        rounds and refreshes that follow); returns the seconds it took (0 if nothing to do).

        The docks call it in the background when a new net is made, while the user paints."""
        from .core.models.feature_net import cached_features, has_fixed_features

        if self.model is None or self.volume is None or not has_fixed_features(self.model):
            return 0.0
        from .core.normalization import DEFAULT_NORMALIZATION

        t0 = time.perf_counter()
        spec = (getattr(self.model, "meta", None) or {}).get("normalization") or DEFAULT_NORMALIZATION
        cached_features(self.model, self.volume.array, dict(spec))
        return time.perf_counter() - t0

    def _require_model(self) -> None:
        if self.model is None:
            raise InputError(
                "no model chosen: pick a shipped model, load a checkpoint or create a new one "
                "in the Segment dock"
            )

    @property
    def meta(self) -> dict[str, Any]:
        """The model's metadata with defaults (class_names, normalization, spacing, ...)."""
        self._require_model()
        from .core.models import model_meta

        return dict(model_meta(self.model))

    @property
    def class_names(self) -> list[str]:
        """One name per class (index 0 = background)."""
        return list(self.meta["class_names"])

    @property
    def in_channels(self) -> int:
        """Input channels the model expects."""
        self._require_model()
        return int(getattr(self.model, "in_channels", 1))

    def describe_model(self) -> str:
        """A short human description: family, receptive field, classes, training spacing."""
        if self.model is None:
            return "No model chosen."
        return describe_model(self.model, self.meta, source=self.model_source,
                              tuned=self.versions.tuned, started_untrained=self._untrained)

    def receptive_field(self) -> tuple[int, int, int] | None:
        """Receptive field (z, y, x) in voxels, if the network states it."""
        return receptive_field(self.model)

    # ------------------------------------------------------------- prediction
    def check_ready(self) -> None:
        """Raise InputError (with what to do) if segmenting cannot start."""
        self._require_image()
        self._require_model()
        if self.num_channels != self.in_channels:
            raise InputError(
                f"the model expects {self.in_channels} input channel(s) but the image "
                f"{self.image_name!r} has {self.num_channels}; pick a single channel in the "
                "Segment dock or choose a model trained on the same channels"
            )

    def _predict_options(self, *, live: bool = False) -> dict[str, Any]:
        """``core.inference.predict`` settings (None = automatic)."""
        options = {k: v for k, v in self.predict_options.items() if v is not None}
        if live and options.get("precision", "auto") == "auto":
            # weights change between live refreshes: skip the per-weights bf16 probe
            options["precision"] = "fp32"
        return options

    def segment(
        self, *, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
        scribbles: np.ndarray | None = None,
    ) -> Results:
        """Predict the whole volume with the current model; stores and returns the results.

        The one segmentation path of the CLI and the Slicer module
        (``core.pipeline.segment_volume``), written into the arrays of the previous results
        when they fit (the layers showing them need no second copy; see
        ``Results.for_prediction``). With :attr:`keep_stroke_components` on and a
        two-class model (one structure on a background), predicted regions of the structure
        that touch none of its strokes are set to background in the label map
        (``core.postprocess``): the strokes of ``scribbles`` (Z, Y, X) when given, else those
        the model was last fine-tuned on. The probability maps stay as predicted.
        """
        from .core.pipeline import segment_volume

        self.check_ready()
        step = self.versions.step
        # predict into the maps the layers already show (float16, in place) when they fit;
        # otherwise drop the old ones before the new ones are allocated. Until the prediction
        # is complete they are marked stale (weights_step -1), also when it is cancelled.
        old, self.results = self.results, None
        res = self.results = Results.for_prediction(old, self.spatial_shape,
                                                    len(self.class_names))
        del old
        was_training = bool(getattr(self.model, "training", False))
        try:
            out = segment_volume(self.volume, self.model, progress=progress, cancel=cancel,
                                 postprocess=self.keep_stroke_components, strokes=scribbles,
                                 probabilities_out=res.probabilities, labels_out=res.labels,
                                 uncertainty_out=res.uncertainty, **self._predict_options())
        finally:
            if was_training:
                self.model.train(True)
        res.weights_step, res.geometry = step, out.labels
        return res

    def ensure_results(self) -> Results:
        """Current results, or empty ones (all background, zero probabilities) to fill in live."""
        self.check_ready()
        k = len(self.class_names)
        shape = self.spatial_shape
        res = self.results
        if res is None or res.labels.shape != shape or res.probabilities.shape[0] != k:
            res = self.results = Results.empty(shape, k)
        return res

    def slice_roi(self, axis: int, index: int) -> Roi:
        """Roi (z, y, x) of the single plane ``index`` along ``axis`` (0 = z) of the image grid."""
        shape = self.spatial_shape
        if not 0 <= axis < 3:
            raise InputError(f"axis must be 0, 1 or 2 (z, y, x), got {axis}")
        index = int(np.clip(index, 0, shape[axis] - 1))
        roi = [slice(0, s) for s in shape]
        roi[axis] = slice(index, index + 1)
        return tuple(roi)  # type: ignore[return-value]

    def predict_region(self, roi: Roi, *, cancel: CancelFn | None = None) -> RegionUpdate:
        """Predict only ``roi`` (3 slices, z, y, x) with the current weights (not stored)."""
        self.check_ready()
        roi = tuple(slice(*s.indices(n)[:2]) for s, n in zip(roi, self.spatial_shape, strict=True))  # type: ignore[assignment]
        from .core.inference import predict

        step = self.versions.step
        probs = np.asarray(predict(self.volume.array, self.model, roi=roi, cancel=cancel,
                                   **self._predict_options(live=True)), dtype=np.float32)
        k = probs.shape[0]
        labels = np.argmax(probs, axis=0).astype(labels_dtype(k))
        return RegionUpdate(roi, labels, probs, normalized_entropy(probs), weights_step=step)

    def apply_region(self, update: RegionUpdate) -> bool:
        """Write a region prediction into :attr:`results` in place.

        Returns:
            False (and changes nothing) if there are no results of the same class count yet or
            if they are newer than the update.
        """
        return self.results is not None and self.results.apply(update)

    # ------------------------------------------------------------- fine-tuning
    def check_scribbles(self, scribbles: np.ndarray) -> np.ndarray:
        """Validate scribbles (Z, Y, X) on the image grid; values 0..K (k = class k-1)."""
        self.check_ready()
        from .core.scribbles import check_scribbles  # the one scribble check

        scribbles = np.asarray(scribbles)
        check_scribbles(scribbles, self.spatial_shape, len(self.class_names), allow_float=False)
        return scribbles

    # ------------------------------------------------------------- versions (Undo)
    @property
    def model_started_new(self) -> bool:
        """True when this session built the model untrained (``new_model``)."""
        return self._untrained

    @property
    def tuned_rounds(self) -> int:
        """Fine-tuning rounds applied to the current model in this session (Undo steps back)."""
        return self.versions.tuned

    @property
    def can_undo(self) -> bool:
        """True if a previous model version exists."""
        return len(self.versions) > 0

    def undo(self) -> bool:
        """Restore the previous model version; False if there is none. Results become stale."""
        return self.versions.undo(self.model)

    # ------------------------------------------------------------- fine-tuning
    def finetune(
        self,
        scribbles: np.ndarray,
        *,
        preview: Preview | None = None,
        on_event: SessionEventFn | None = None,
        refresh: bool = True,
        cancel: CancelFn | None = None,
        **train_options: Any,
    ) -> FinetuneOutcome:
        """Fine-tune the current model on ``scribbles`` (Z, Y, X; 0 = unlabelled, k = class
        k-1), previewing ``preview``'s region while it trains; see
        :func:`._session_training.run_finetune`. The weights before go on the Undo stack;
        ``cancel()`` keeps the weights reached; with ``refresh`` the whole volume is predicted
        afterwards into :attr:`results`. One ``on_event`` callback receives ``StepDone``,
        ``RegionUpdate`` and ``Refreshing`` events. ``train_options`` override the recipe
        (``core.recipes``): steps, seconds, lr, batch_size, device, precision, ...
        """
        return run_finetune(self, scribbles, preview=preview, on_event=on_event,
                            refresh=refresh, cancel=cancel, options=train_options)

    def start_live(self, scribbles: np.ndarray, **train_options: Any) -> LiveTraining:
        """Start training that takes new strokes as they are painted (see :class:`LiveTraining`).

        Pushes one Undo version (the weights before the live session); the fixed features of a
        ``feature_net`` are computed here if not cached yet.
        """
        self.check_ready()
        return LiveTraining(self, scribbles, **train_options)

    def save_model(self, path: str | os.PathLike) -> Path:
        """Write the current model as a checkpoint (safetensors + JSON sidecar)."""
        self._require_model()
        from .core.models import save_model

        meta = self.meta
        if self.volume is not None and meta.get("fine_tuned_on") != self.image_name:
            meta["spacing"] = [float(s) for s in self.volume.spacing]
            meta["fine_tuned_on"] = self.image_name
        return Path(save_model(path, self.model, **meta))

    # ------------------------------------------------------------- autosave
    @property
    def store(self) -> ScribbleStore:
        """Scribble autosave of the current image (key computed on first use)."""
        self._require_image()
        if self._store is None:
            key = image_key(
                self.volume.array, spacing=tuple(self.volume.spacing), source_path=self.source_path
            )
            self._store = ScribbleStore(key, self.autosave_folder)
        return self._store

    def autosave_scribbles(self, scribbles: np.ndarray) -> Path:
        """Atomically save the scribbles of the current image; returns the file."""
        return self.store.save(scribbles)

    def load_scribbles(self) -> np.ndarray | None:
        """Scribbles autosaved for the current image, or None."""
        return self.store.load(self.spatial_shape)
