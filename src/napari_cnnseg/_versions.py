"""Undo stack of a session's model weights, with the counters the session and docks read."""

from __future__ import annotations

from typing import Any


class WeightVersions:
    """Previous weights of one model (for Undo) and two counters.

    Attributes:
        step: bumped at every change of the weights (an optimisation step, Undo, a new
            model): results predicted at an older step are stale.
        tuned: fine-tuning rounds applied to the current model (Undo steps one back).
        max_versions: how many previous versions are kept (the oldest go first).
    """

    def __init__(self, max_versions: int = 20) -> None:
        self.max_versions = int(max_versions)
        self._stack: list[dict[str, Any]] = []
        self.step = 0
        self.tuned = 0

    def __len__(self) -> int:
        return len(self._stack)

    def reset(self) -> None:
        """A new model: no previous versions, no rounds."""
        self._stack.clear()
        self.tuned = 0
        self.step += 1

    def push(self, model: Any) -> None:
        """Keep a copy of ``model``'s current weights."""
        self._stack.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        del self._stack[: -self.max_versions]

    def drop(self, model: Any) -> None:
        """Put back the weights last pushed (a round that failed), without counting a round."""
        model.load_state_dict(self._stack.pop())
        self.step += 1

    def round_done(self) -> None:
        """Count a finished fine-tuning round."""
        self.tuned += 1
        self.step += 1

    def undo(self, model: Any) -> bool:
        """Restore the previous weights into ``model``; False if there are none."""
        if not self._stack:
            return False
        model.load_state_dict(self._stack.pop())
        self.step += 1
        self.tuned = max(0, self.tuned - 1)
        return True
