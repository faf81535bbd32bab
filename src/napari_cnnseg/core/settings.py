"""Keyword options applied to a frozen settings dataclass, the one way every core entry point
(``TrainConfig``, ``PredictSettings``, ``Ranking``) turns ``**options`` into its settings."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

from .errors import InputError

T = TypeVar("T")


def with_options(cls: type[T], base: T | None, options: dict[str, Any], what: str) -> T:
    """``base`` (or ``cls()``) with ``options`` applied.

    Raises:
        InputError: an option that is not a field of ``cls``, named with the known ones
            (``what`` says whose: "training", "prediction", ...).
    """
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(f"unknown {what} setting(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    return replace(base or cls(), **options)  # type: ignore[type-var]
