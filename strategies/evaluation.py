"""Federated evaluation: who evaluates the global model, and the capped-weight means.

Evaluation replies go through the same stage checks as train replies (a node's version and
schema, its error codes) and :mod:`strategies.replies`; the weights are the reported example
counts capped as for training, so one client cannot claim the evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_ext.aggregators import capped_example_weights
from fl_ext.selection import UniformSelector
from strategies.stage import Stage


def weighted_means(
    counts: list[int], values: dict[str, list[float]], weight_cap_factor: float | None
) -> dict[str, float]:
    """Mean of each value list, weighted by the capped reported example counts."""
    weights = capped_example_weights(np.array(counts, dtype=np.float64), weight_cap_factor)
    weights = weights / weights.sum()
    return {k: float(np.dot(weights, np.array(v))) for k, v in values.items()}


class EvaluationSampler(Stage):
    """A seeded uniform draw of ``fraction`` of the nodes (at least ``min_nodes``)."""

    name = "evaluate_selector"

    def __init__(self, *, fraction: float, min_nodes: int, seed: int) -> None:
        self.min_nodes = int(min_nodes)
        self.selector = UniformSelector(fraction=fraction, minimum=min_nodes, seed=seed)

    def select(self, nodes: list[int]) -> list[int]:
        """The evaluating nodes, or [] when fewer than ``min_nodes`` may evaluate."""
        return self.selector.select(nodes) if len(nodes) >= self.min_nodes else []

    def state_dict(self) -> dict[str, Any]:
        return self.selector.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.selector.load_state_dict(state)
