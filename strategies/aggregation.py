"""The aggregation slot: the round's valid updates become one step of the global model.

:class:`RobustStep` (the default) weights updates by capped example counts and applies the
robust pipeline (pre-aggregators, then the rule; FedAvg's weighted mean by default).
Client-level DP replaces it by its Gaussian mechanism (:class:`strategies.privacy.ClientLevelDP`).
A :class:`ServerStep` (FedAvgM, FedAdam, FedYogi, FedAdagrad) may follow either.
:class:`ServerReference` is the server's own update on its root set, for rules that need
it (FLTrust): it provides ``reference_update`` through the round.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from logging import WARNING
from typing import Any

import numpy as np
import torch
from flwr.supercore import log

from fl_ext.aggregators import AggregatorState, RobustAggregation, capped_example_weights
from fl_ext.aggregators.coverage import CoverageStats, aggregate_by_coverage
from fl_ext.server_opt import ServerOptimizer
from strategies.replies import TrainReply
from strategies.round import Round
from strategies.stage import Stage

ReferenceFn = Callable[[int, "OrderedDict[str, np.ndarray]"], torch.Tensor]


class Aggregation(Stage):
    """A stage that fills the aggregation slot."""

    name = "aggregation"
    replaceable = False  # the plain default another part (client-level DP) may take over

    def min_inputs(self) -> int:
        """Valid updates a round needs (0: the slot releases every round)."""
        return 1

    def aggregate(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> torch.Tensor | None:
        """The aggregate update; None skips the round (``rnd.log.skipped`` says why)."""
        raise NotImplementedError

    def preview(self, rnd: Round, stacked: torch.Tensor) -> torch.Tensor:
        """The aggregate of ``stacked`` without touching any state (an attacker's view)."""
        raise NotImplementedError

    def requirement(self) -> tuple[int, str]:
        """The rule's own minimum of updates per round, and why (for the start-up checks)."""
        return self.min_inputs(), self.describe()

    def describe(self) -> str:
        return type(self).__name__

    def describe_requirement(self) -> str:
        return self.describe()


class RobustStep(Aggregation):
    """Capped example-count weights and the robust pipeline; skips below its minimum."""

    def __init__(
        self,
        pipeline: RobustAggregation,
        *,
        min_replies: int,
        weight_cap_factor: float | None,
    ) -> None:
        self.pipeline = pipeline
        self.min_replies = int(min_replies)
        self.weight_cap_factor = weight_cap_factor
        self.state = AggregatorState()  # explicit state of stateful rules
        self.coverage: CoverageStats | None = None  # this round's, when nodes trained slices
        self.requires = frozenset(
            {"individual_updates", *(["reference_update"] if pipeline.needs_reference else [])}
        )
        self.replaceable = not pipeline.preagg and pipeline.rule.is_plain_mean
        self.provides = frozenset({"coverage_aggregation"})  # per coordinate over its holders

    def min_inputs(self) -> int:
        return max(self.min_replies, self.pipeline.min_inputs())

    def requirement(self) -> tuple[int, str]:
        rule = self.pipeline.rule
        return self.pipeline.min_inputs(), f"{type(rule).__name__}: {rule.requirement()}"

    def aggregate(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> torch.Tensor | None:
        if len(accepted) < self.min_inputs():
            rnd.log.skipped = (
                f"{len(accepted)} valid replies; min_train_nodes is {self.min_replies} and "
                f"{self.pipeline.describe()} needs {self.pipeline.min_inputs()}"
            )
            log(
                WARNING, "Round %d skipped, global model unchanged: %s", rnd.number, rnd.log.skipped
            )
            return None
        self._bind(rnd, self.state)
        counts = np.array([r.num_examples for r in accepted], dtype=np.float64)
        weights = torch.from_numpy(capped_example_weights(counts, self.weight_cap_factor))
        held = coverage_matrix(rnd, accepted)
        if held is None:
            return self.pipeline(updates, weights, self.state)
        delta, self.coverage = aggregate_by_coverage(
            updates, weights, held, self.pipeline, min_holders=self.pipeline.min_inputs(),
            state=self.state,
        )  # fmt: skip
        return delta

    def metrics(self, rnd: Round) -> dict[str, float]:
        stats, self.coverage = self.coverage, None
        if stats is None:
            return {}
        return {
            "coverage_groups": float(stats.groups),
            "coverage_min_holders": float(stats.min_holders),
            "coverage_mean_holders": stats.mean_holders,
            "coordinates_kept": float(stats.coordinates_kept),
        }

    def preview(self, rnd: Round, stacked: torch.Tensor) -> torch.Tensor:
        state = AggregatorState(center=self.state.center, round=self.state.round)
        self._bind(rnd, state)
        return self.pipeline(stacked, None, state)

    def _bind(self, rnd: Round, state: AggregatorState) -> None:
        state.round = rnd.number
        if rnd.reference is not None:
            state.reference = rnd.reference.to(torch.float32)

    def describe(self) -> str:
        return self.pipeline.describe()

    def state_dict(self) -> dict[str, Any]:
        center = self.state.center
        return {"round": self.state.round, **({} if center is None else {"center": center.numpy()})}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        center = state.get("center")
        self.state.load_state_dict(
            {
                "center": None if center is None else torch.from_numpy(np.array(center)),
                "round": int(state["round"]),
            }
        )


def coverage_matrix(rnd: Round, accepted: list[TrainReply]) -> torch.Tensor | None:
    """Bool ``[n, d]``: the coordinates each accepted node trained; None when all hold all."""
    if not any(r.node_id in rnd.coverage for r in accepted):
        return None
    held = torch.ones((len(accepted), rnd.spec.size), dtype=torch.bool)
    for i, reply in enumerate(accepted):
        mask = rnd.coverage.get(reply.node_id)
        if mask is not None:
            held[i] = mask
    return None if bool(held.all()) else held


class ServerReference(Stage):
    """The server's own update on its root set each round (FLTrust's trusted direction)."""

    name = "server_reference"
    provides = frozenset({"reference_update"})

    def __init__(self, update: ReferenceFn) -> None:
        self.update = update

    def on_accepted(self, rnd: Round, accepted: list[TrainReply]) -> None:
        rnd.reference = self.update(rnd.number, rnd.global_named)


class ServerStep(Stage):
    """A server optimizer applied to the aggregate (Reddi et al. 2021); its state checkpointed."""

    name = "server_opt"

    def __init__(self, optimizer: ServerOptimizer) -> None:
        self.optimizer = optimizer
        self.state: dict[str, torch.Tensor] | None = None  # made at the first step

    def step(self, delta: torch.Tensor) -> torch.Tensor:
        """The step the global model takes for the aggregate update ``delta``."""
        if self.state is None:
            self.state = self.optimizer.init(delta)
        self.optimizer.check_state(self.state, delta.numel())  # a restored state
        step, self.state = self.optimizer.update(delta, self.state)
        return step

    def state_dict(self) -> dict[str, Any]:
        return {k: v.cpu().numpy() for k, v in (self.state or {}).items()}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.state = {k: torch.from_numpy(np.array(v)) for k, v in state.items()} or None

    def summary(self) -> str:
        return f"server optimizer: {self.optimizer!r}"
