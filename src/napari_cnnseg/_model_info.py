"""Plain-text facts about a session's network (Qt-free): what the docks show about a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .core.errors import InputError

#: registry names of the network families offered as "New untrained ..." models
FAMILIES: dict[str, str] = {
    "feature_net": "Feature net (recommended for a new structure)",
    "patch_classifier": "Patch classifier",
    "unet": "U-Net",
    "encoder_decoder": "Encoder-decoder",
    "multiscale": "Multi-scale",
}


def receptive_field(model: Any) -> tuple[int, int, int] | None:
    """Receptive field (z, y, x) in voxels, if the network states it (or its margin does)."""
    rf = getattr(model, "receptive_field", None)
    if rf is not None:
        return tuple(int(r) for r in rf)  # type: ignore[return-value]
    margin = getattr(model, "margin", None)
    if margin is None and hasattr(model, "to_dense"):
        try:
            from .core.models import as_dense

            margin = getattr(as_dense(model), "margin", None)
        except Exception:  # noqa: BLE001 - description only
            margin = None
    if margin is not None and any(int(m) > 0 for m in margin):
        return tuple(2 * int(m) + 1 for m in margin)  # type: ignore[return-value]
    return None


def describe_model(model: Any, meta: dict[str, Any], *, source: str, tuned: int,
                   started_untrained: bool) -> str:
    """A short description: family, where the weights come from, receptive field, classes,
    training spacing, size. ``tuned``: fine-tuning rounds applied in this session."""
    arch = getattr(model, "arch_name", type(model).__name__)
    family = FAMILIES.get(arch, arch)
    about = str(meta.get("description") or source or arch)
    if len(about) > 60:
        about = about[:57].rstrip() + "…"
    if tuned:  # what the weights are now, not only where they came from
        about = f"new, fine-tuned {tuned}× here" if started_untrained \
            else f"{about}; fine-tuned {tuned}× here"
    lines = [f"{family} ({about})"]
    rf = receptive_field(model)
    if rf is not None:
        lines.append("receptive field " + "×".join(str(r) for r in rf) + " voxels (z×y×x)")
    names = meta["class_names"]
    lines.append(f"{len(names)} classes: " + ", ".join(names))
    spacing = meta.get("spacing")
    if spacing:
        lines.append("trained at spacing " + "×".join(f"{float(s):g}" for s in spacing))
    n = sum(int(p.numel()) for p in model.parameters())
    in_ch = int(getattr(model, "in_channels", 1))
    lines.append(f"{n / 1e3:.1f} k parameters, {in_ch} input channel(s)")
    return "\n".join(lines)


@dataclass(frozen=True)
class ModelOrigin:
    """Where a session's model comes from.

    Attributes:
        kind: "new" (built untrained here), "shipped" (a bundled model), "checkpoint" (a file)
            or "none" (no model).
        name: the family (new), the shipped name, or the checkpoint path.
        tuned: fine-tuning rounds applied in this session.
    """

    kind: str
    name: str
    tuned: int = 0

    @classmethod
    def of(cls, source: str, *, untrained: bool, tuned: int) -> ModelOrigin:
        """The origin of a model the session recorded as ``source``."""
        if untrained:
            return cls("new", source.removeprefix("new ").strip(), tuned)
        from .core.models import list_pretrained

        kind = "shipped" if source in list_pretrained() else "checkpoint"
        return cls(kind, source, tuned)


def build_new_model(family: str, class_names: list[str] | None = None, *,
                    num_classes: int | None = None, in_channels: int = 1,
                    spacing: tuple[float, float, float] | None = None, **config: Any) -> Any:
    """An untrained network of ``family`` (see :data:`FAMILIES`) for a new task on a grid of
    ``spacing`` (z, y, x mm; the recommended config of ``interactive_config``, overridden by
    ``config``), with class names and ``meta["new_task"]``.

    Raises:
        InputError: an unknown family or fewer than two classes.
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
    config = {**interactive_config(family, spacing, len(class_names)), **config}
    model = build_model(family, in_channels=int(in_channels), num_classes=len(class_names),
                        **config)
    model.meta = {**(getattr(model, "meta", None) or {}), "class_names": list(class_names),
                  "description": f"untrained {FAMILIES[family]}", "new_task": True}
    return model
