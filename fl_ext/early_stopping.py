"""Convergence monitoring: stop when a round metric stopped improving for ``patience`` rounds.

A round improves on the best so far if its metric is better by more than ``min_delta``
(lower for a loss, higher for an accuracy). After ``patience`` rounds in a row without an
improvement, :meth:`EarlyStopping.update` returns the reason; the caller ends the run there
and registers its best model as usual. Rounds that report no value (no central evaluation
that round, a skipped round) neither count nor reset the wait.
"""

from __future__ import annotations

import math
from typing import Any


class EarlyStopping:
    """``patience`` rounds without an improvement of ``min_delta`` in ``metric`` end the run."""

    def __init__(self, *, patience: int, min_delta: float = 0.0, metric: str = "test_loss") -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"early_stopping.patience must be an integer >= 1, got {patience!r}")
        if not (isinstance(min_delta, int | float) and math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"early_stopping.min_delta must be finite and >= 0, got {min_delta!r}")
        if not metric.endswith(("loss", "accuracy")):
            raise ValueError(
                f"early_stopping.metric must be a loss or an accuracy (test_loss, "
                f"test_accuracy, fed_eval_loss, fed_eval_accuracy), got {metric!r}"
            )
        self.patience, self.min_delta, self.metric = patience, float(min_delta), metric
        self.lower_is_better = metric.endswith("loss")
        self.best: float | None = None
        self.best_round: int | None = None
        self.waited = 0

    def _improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.lower_is_better:
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, server_round: int, metrics: dict[str, float]) -> str | None:
        """Account one round; the reason to stop, or None to go on."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        if self._improves(float(value)):
            self.best, self.best_round, self.waited = float(value), server_round, 0
            return None
        self.waited += 1
        if self.waited < self.patience:
            return None
        return (
            f"early stopping: {self.metric} did not improve by more than {self.min_delta:g} for "
            f"{self.patience} round{'s' if self.patience != 1 else ''} (best {self.best:.4f} in "
            f"round {self.best_round})"
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the best value, its round and the rounds waited since."""
        return {"best": self.best, "best_round": self.best_round, "waited": self.waited}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (a resumed run goes on waiting where it was)."""
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.best_round = state.get("best_round")
        self.waited = int(state.get("waited", 0))
