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
    session.finetune(scribbles, seconds=10, region=lambda: session.slice_roi(0, 20),
                     on_region=print)         # live slice refreshes, then whole volume
    session.undo()                            # previous weights

Threading: :meth:`segment`, :meth:`predict_region` and :meth:`finetune` may run in a worker
thread; :meth:`apply_region` writes into the result arrays (which the GUI shows as layer
data) and belongs to the thread that owns those arrays (the GUI thread).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._autosave import ScribbleStore, image_key
from ._colors import (  # noqa: F401 - re-exported: the docks import them from here
    CLASS_COLORMAPS,
    CLASS_COLORS,
    class_color,
    class_colormap,
)
from ._results import (  # noqa: F401 - re-exported: the docks and tests import them from here
    FinetuneOutcome,
    RegionUpdate,
    Results,
    Roi,
    normalized_entropy,
)
from .core.errors import Cancelled, InputError
from .core.jobs import CancelFn, ProgressFn
from .core.pipeline import labels_dtype

logger = logging.getLogger(__name__)

#: registry names of the network families offered as "New untrained ..." models
FAMILIES: dict[str, str] = {
    "feature_net": "Feature net (recommended for a new structure)",
    "patch_classifier": "Patch classifier",
    "unet": "U-Net",
    "encoder_decoder": "Encoder-decoder",
    "multiscale": "Multi-scale",
}

#: live previews during fine-tuning take at most this share of the training time
LIVE_REFRESH_MAX_SHARE = 0.2


def warm_up_training() -> None:
    """Pay torch's one-time optimiser start-up cost (it imports ``torch._dynamo``, ~1-3 s).

    The Fine-tune dock calls this in a background thread when it opens, so the first click on
    Fine-tune does not wait for it.
    """
    import torch

    from .core import inference, training  # noqa: F401 - imported for their start-up cost

    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


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
        self.max_versions = max_versions
        self._versions: list[dict[str, Any]] = []
        self._tuned = 0  # fine-tuning rounds applied to the current model (Undo steps back)
        self._untrained = False  # the current model was built untrained (see model_is_fresh)
        #: labels keep only the regions of a painted class that touch its strokes (after
        #: fine-tuning; see ``segment``)
        self.keep_stroke_components = True
        self._weights_step = 0
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
        self._versions.clear()
        self._tuned = 0
        self._weights_step += 1

    @property
    def model_is_fresh(self) -> bool:
        """True while the model is one this session built untrained (``new_model``) and not yet
        fine-tuned (or undone back to that state): the fresh-net recipe applies only then."""
        return self._untrained and self._tuned == 0

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
        from .core.models import build_model, interactive_config

        if family not in FAMILIES:
            raise InputError(f"unknown model family {family!r}; choose one of {', '.join(FAMILIES)}")
        if class_names is None:
            k = int(num_classes or 2)
            class_names = ["background"] + [f"class {i}" for i in range(1, k)]
        class_names = [str(n).strip() or f"class {i}" for i, n in enumerate(class_names)]
        if len(class_names) < 2:
            raise InputError("a segmentation model needs at least 2 classes (background + one)")
        if in_channels is None:
            in_channels = self.num_channels if self.volume is not None else 1
        spacing = tuple(self.volume.spacing) if self.volume is not None else None
        # the recommended net for a new task on this grid, unless overridden
        config = {**interactive_config(family, spacing), **config}
        model = build_model(
            family, in_channels=int(in_channels), num_classes=len(class_names), **config
        )
        meta = dict(getattr(model, "meta", None) or {})
        meta.update(class_names=list(class_names), description=f"untrained {FAMILIES[family]}",
                    new_task=True)
        model.meta = meta
        self.set_model(model, source=f"new {family}", untrained=True)
        return model

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
        meta = self.meta
        arch = getattr(self.model, "arch_name", type(self.model).__name__)
        family = FAMILIES.get(arch, arch)
        about = str(meta.get("description") or self.model_source or arch)
        if len(about) > 60:
            about = about[:57].rstrip() + "…"
        if self._tuned:  # what the weights are now, not only where they came from
            tuned = f"fine-tuned {self._tuned}× here"
            about = f"new, {tuned}" if self._untrained else f"{about}; {tuned}"
        lines = [f"{family} ({about})"]
        rf = self.receptive_field()
        if rf is not None:
            lines.append("receptive field " + "×".join(str(r) for r in rf) + " voxels (z×y×x)")
        names = meta["class_names"]
        lines.append(f"{len(names)} classes: " + ", ".join(names))
        spacing = meta.get("spacing")
        if spacing:
            lines.append("trained at spacing " + "×".join(f"{float(s):g}" for s in spacing))
        n = sum(int(p.numel()) for p in self.model.parameters())
        lines.append(f"{n / 1e3:.1f} k parameters, {self.in_channels} input channel(s)")
        return "\n".join(lines)

    def receptive_field(self) -> tuple[int, int, int] | None:
        """Receptive field (z, y, x) in voxels, if the network states it."""
        rf = getattr(self.model, "receptive_field", None)
        if rf is not None:
            return tuple(int(r) for r in rf)  # type: ignore[return-value]
        margin = getattr(self.model, "margin", None)
        if margin is None and hasattr(self.model, "to_dense"):
            try:
                from .core.models import as_dense

                margin = getattr(as_dense(self.model), "margin", None)
            except Exception:  # noqa: BLE001 - description only
                margin = None
        if margin is not None and any(int(m) > 0 for m in margin):
            return tuple(2 * int(m) + 1 for m in margin)  # type: ignore[return-value]
        return None

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

    def _auto_tile_shape(self) -> tuple[int, int, int] | None:
        """Tile request for nets with wide valid margins (None = predict's default).

        A valid net loses ``2 * margin`` voxels per tile; with predict's default 96^3 tiles a
        net with a 44-voxel margin would keep only 8^3 of every tile. Ask for tiles whose
        output is at least ~48 voxels per axis instead (predict still clips them to the image).
        """
        margin = getattr(self.model, "margin", None)
        if margin is None and hasattr(self.model, "to_dense"):
            try:
                from .core.models import as_dense

                margin = getattr(as_dense(self.model), "margin", None)
            except Exception:  # noqa: BLE001 - fall back to predict's default
                return None
        if margin is None or max(int(m) for m in margin) <= 16:
            return None
        return tuple(max(96, 2 * int(m) + 48) for m in margin)  # type: ignore[return-value]

    def _predict(
        self,
        roi: Roi | None,
        progress: ProgressFn | None,
        cancel: CancelFn | None,
        *,
        live: bool = False,
    ) -> np.ndarray:
        from .core.inference import predict

        options = {k: v for k, v in self.predict_options.items() if v is not None}
        if "tile_shape" not in options:
            tile = self._auto_tile_shape()
            if tile is not None:
                options["tile_shape"] = tile
        if live and options.get("precision", "auto") == "auto":
            # weights change between live refreshes: skip the per-weights bf16 probe
            options["precision"] = "fp32"
        was_training = bool(getattr(self.model, "training", False))
        try:
            probs = predict(
                self.volume.array, self.model, roi=roi, progress=progress, cancel=cancel, **options
            )
        finally:
            if was_training:
                self.model.train(True)
        return np.asarray(probs, dtype=np.float32)

    def segment(
        self, *, progress: ProgressFn | None = None, cancel: CancelFn | None = None,
        scribbles: np.ndarray | None = None,
    ) -> Results:
        """Predict the whole volume with the current model; stores and returns the results.

        With ``scribbles`` (Z, Y, X), :attr:`keep_stroke_components` on and a two-class model
        (one structure on a background), predicted regions of the structure that touch none of
        its strokes are set to background in the label map (``core.postprocess``); the
        probability maps stay as predicted.
        """
        self.check_ready()
        step = self._weights_step
        probs = self._predict(None, progress, cancel)
        k = probs.shape[0]
        labels = np.argmax(probs, axis=0).astype(labels_dtype(k))
        if self.keep_stroke_components:
            from .core.postprocess import applies_to, apply_stroke_seeds, keep_stroke_components

            if scribbles is None:  # the strokes the model was last fine-tuned on, if any
                labels = apply_stroke_seeds(labels, getattr(self.model, "meta", None) or {}, k)
            elif applies_to(k):
                labels = keep_stroke_components(labels, scribbles)
        results = Results(labels, probs, normalized_entropy(probs), weights_step=step)
        self.results = results
        return results

    def ensure_results(self) -> Results:
        """Current results, or empty ones (all background, zero probabilities) to fill in live."""
        self.check_ready()
        k = len(self.class_names)
        shape = self.spatial_shape
        res = self.results
        if res is None or res.labels.shape != shape or res.probabilities.shape[0] != k:
            res = Results(
                np.zeros(shape, dtype=labels_dtype(k)),
                np.zeros((k, *shape), dtype=np.float32),
                np.zeros(shape, dtype=np.float32),
                weights_step=-1,
            )
            self.results = res
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
        step = self._weights_step
        probs = self._predict(roi, None, cancel, live=True)
        k = probs.shape[0]
        labels = np.argmax(probs, axis=0).astype(labels_dtype(k))
        return RegionUpdate(roi, labels, probs, normalized_entropy(probs), weights_step=step)

    def apply_region(self, update: RegionUpdate) -> bool:
        """Write a region prediction into :attr:`results` in place.

        Returns:
            False (and changes nothing) if there are no results of the same class count yet or
            if they are newer than the update.
        """
        res = self.results
        if res is None or update.weights_step < res.weights_step:
            return False
        if update.probabilities.shape[0] != res.probabilities.shape[0]:
            return False
        res.labels[update.roi] = update.labels
        res.probabilities[(slice(None), *update.roi)] = update.probabilities
        res.uncertainty[update.roi] = update.uncertainty
        res.weights_step = update.weights_step
        return True

    # ------------------------------------------------------------- fine-tuning
    def check_scribbles(self, scribbles: np.ndarray) -> np.ndarray:
        """Validate scribbles (Z, Y, X) on the image grid; values 0..K (k = class k-1)."""
        self.check_ready()
        from .core.scribbles import check_scribbles  # the one scribble check

        scribbles = np.asarray(scribbles)
        check_scribbles(scribbles, self.spatial_shape, len(self.class_names), allow_float=False)
        return scribbles

    def _push_version(self) -> None:
        state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._versions.append(state)
        del self._versions[: -self.max_versions]

    @property
    def tuned_rounds(self) -> int:
        """Fine-tuning rounds applied to the current model in this session (Undo steps back)."""
        return self._tuned

    @property
    def can_undo(self) -> bool:
        """True if a previous model version exists."""
        return bool(self._versions)

    def undo(self) -> bool:
        """Restore the previous model version; False if there is none. Results become stale."""
        if not self._versions:
            return False
        self.model.load_state_dict(self._versions.pop())
        self._weights_step += 1
        self._tuned = max(0, self._tuned - 1)
        return True

    def finetune(
        self,
        scribbles: np.ndarray,
        *,
        steps: int | None = None,
        seconds: float | None = None,
        refresh_every: int = 5,
        refresh_seconds: float | None = None,
        region: Callable[[], Roi | None] | None = None,
        on_region: Callable[[RegionUpdate], None] | None = None,
        on_loss: Callable[[int, float], None] | None = None,
        refresh: bool = True,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        refresh_progress: ProgressFn | None = None,
        **train_options: Any,
    ) -> FinetuneOutcome:
        """Fine-tune the current model on ``scribbles`` with live region refreshes.

        The weights before training are pushed on the Undo stack. After the first training step
        and then every ``refresh_seconds`` (or every ``refresh_every`` steps), the region
        returned by ``region()`` (e.g. the visible slice) is predicted with the current weights
        and passed to ``on_region``, so the user sees the effect of the new strokes after one
        step. Stopping (``cancel()`` True)
        keeps the weights reached so far. With ``refresh`` the whole volume is predicted
        afterwards and stored in :attr:`results`.

        Args:
            scribbles: (Z, Y, X) int array, 0 = unlabelled, k = class k-1.
            steps, seconds: training budget (see ``core.training.finetune``).
            refresh_every: training steps between live refreshes (>= 1), when
                ``refresh_seconds`` is None.
            refresh_seconds: seconds between live refreshes (the dock uses 1.5). The pause
                also stretches to 1 / :data:`LIVE_REFRESH_MAX_SHARE` times the last refresh's
                cost, so previews never take more than that share of the training time. The
                time budget ``seconds`` stays wall-clock time, previews included.
            region: returns the roi (z, y, x slices) to refresh live, or None to skip.
            on_region: receives each :class:`RegionUpdate` (called in the training thread).
            on_loss: receives ``(step, loss)`` after every step (training thread).
            refresh: predict the whole volume after training.
            progress, cancel: training progress ``(step, total)`` / stop request.
            refresh_progress: progress of the whole-volume refresh.
            **train_options: more keyword arguments for ``core.training.finetune`` (lr,
                batch_size, crop_shape, prior_weight, keep_best, device, precision, ...).
        """
        from .core.training import (
            FinetuneHistory,
            finetune,
            recommended_crop,
            recommended_settings,
            started_new,
        )

        # the recipe follows where the net started: new for this task, or trained elsewhere
        train_options = {"crop_shape": recommended_crop(self.spatial_shape, self.volume.spacing),
                         **recommended_settings(self._untrained or started_new(self.model),
                                                self.model),
                         **train_options}
        scribbles = self.check_scribbles(scribbles)
        every = max(1, int(refresh_every))
        outcome = FinetuneOutcome(history=FinetuneHistory())
        self._push_version()
        model = self.model
        last = [0]
        next_at = [0.0]  # perf_counter time of the next due refresh (refresh_seconds)

        def _due(done: int) -> bool:
            if done == 1:
                return True
            if refresh_seconds is None:
                return done - last[0] >= every
            return time.perf_counter() >= next_at[0]

        def _on_step(done: int, total: int) -> None:
            # called by the trainer after every optimisation step (weights consistent)
            self._weights_step += 1
            outcome.steps = done
            if progress is not None:
                progress(done, total)
            if on_loss is not None and outcome.history.losses:
                on_loss(done, float(outcome.history.losses[-1]))
            if region is None or on_region is None or not _due(done):
                return
            roi = region()
            if roi is not None:
                last[0] = done
                t0 = time.perf_counter()
                on_region(self.predict_region(roi))
                outcome.region_updates += 1
                now = time.perf_counter()
                pause = max(float(refresh_seconds or 0.0), (now - t0) / LIVE_REFRESH_MAX_SHARE)
                next_at[0] = now + pause

        try:
            finetune(
                model,
                self.volume.array,
                scribbles,
                steps=steps,
                seconds=seconds,
                history=outcome.history,
                progress=_on_step,
                cancel=cancel,
                **train_options,
            )
        except Cancelled:
            outcome.stopped = True
            logger.info("fine-tuning stopped by the user; keeping the weights reached")
        except BaseException:
            # nothing useful happened: put the previous weights back
            model.load_state_dict(self._versions.pop())
            raise
        self._tuned += 1
        self._weights_step += 1
        outcome.losses = [float(x) for x in outcome.history.losses]
        model.eval()
        if refresh:
            outcome.results = self.segment(progress=refresh_progress, scribbles=scribbles)
        return outcome

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
