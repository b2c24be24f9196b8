"""Automatic rollback: a round that poisoned the model is undone before the run goes on.

When the centralized accuracy of a round's model falls more than ``max_drop`` below the last
kept round's, or its loss is not finite, the run keeps the model the round started from
(the last completed round's, which its signed checkpoint holds) instead; the round is
recorded (``rolled_back``, ``rollback_from_accuracy``), an ``ALERT rollback`` line is logged,
and stages that act on it (quarantine) see ``rolled_back`` in the round's metrics. What the
round spent of a privacy budget stays spent: a release cannot be taken back.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.supercore import log

from strategies.round import Round
from strategies.stage import Stage

ROLLED_BACK = "rolled_back"


class Rollback(Stage):
    """Undo a round whose centralized accuracy dropped by more than ``max_drop`` (or NaN loss)."""

    name: ClassVar[str] = "rollback"

    def __init__(self, *, max_drop: float = 0.1, metric: str = "test_accuracy") -> None:
        if not 0 < max_drop <= 1:
            raise ValueError(f"rollback.max_drop must be in (0, 1], got {max_drop!r}")
        self.max_drop, self.metric = float(max_drop), metric
        self.last_kept: float | None = None  # the accuracy of the last model kept
        self.rolled_back: list[int] = []
        self._started_from: OrderedDict[str, np.ndarray] | None = None
        self._revert: OrderedDict[str, np.ndarray] | None = None

    def metrics(self, rnd: Round) -> dict[str, float]:
        self._started_from = rnd.global_named  # what the round trained from
        return {}

    def after_round(self, server_round: int, metrics: dict[str, float]) -> str | None:
        accuracy, loss = metrics.get(self.metric), metrics.get("test_loss")
        why = self.reason(accuracy, loss)
        metrics[ROLLED_BACK] = float(why is not None)
        if why is None:
            if accuracy is not None:
                self.last_kept = accuracy
            return None
        log(WARNING, "ALERT rollback round %d: %s; its model is discarded", server_round, why)
        self._revert = self._started_from
        self.rolled_back.append(server_round)
        metrics["rollback_from_accuracy"] = float("nan") if accuracy is None else accuracy
        return None

    def reason(self, accuracy: float | None, loss: float | None) -> str | None:
        """Why the round's model must not be kept, or None."""
        if self._started_from is None:
            return None
        if loss is not None and not math.isfinite(loss):
            return "the test loss is not finite"
        if accuracy is None or self.last_kept is None or accuracy >= self.last_kept - self.max_drop:
            return None
        return (
            f"{self.metric} fell from {self.last_kept:.4f} to {accuracy:.4f} (more than "
            f"max_drop {self.max_drop:g})"
        )

    def replacement(self) -> OrderedDict[str, np.ndarray] | None:
        revert, self._revert = self._revert, None
        return revert

    def state_dict(self) -> dict[str, Any]:
        return {"last_kept": self.last_kept, "rolled_back": list(self.rolled_back)}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        kept = state.get("last_kept")
        self.last_kept = None if kept is None else float(kept)
        self.rolled_back = [int(r) for r in state.get("rolled_back", [])]

    def summary(self) -> str:
        return f"rollback when {self.metric} drops by more than {self.max_drop:g} in a round"
