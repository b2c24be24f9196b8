"""The sampler slot: who is asked to train this round, and how many updates the round needs.

:class:`SelectorSampler` (the default) asks a :class:`~fl_ext.selection.Selector` for the
round's nodes (with the clock's over-selection) and keeps the per-node history selectors learn
from (:class:`~fl_ext.selection.ClientRegistry`). Client-level DP replaces it by Poisson
sampling (:class:`strategies.privacy.ClientLevelDP`), which is what its accounting assumes.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import WARNING
from typing import Any

from flwr.supercore import log

from fl_ext.selection import ClientRegistry, Selector
from strategies.replies import TrainReply, reported_loss
from strategies.round import Round
from strategies.stage import Stage

OverSelect = Callable[[int, int], int]  # (needed, eligible) -> nodes to ask


class Sampler(Stage):
    """A stage that fills the sampler slot."""

    name = "sampler"
    registry: ClientRegistry | None = None  # per-node history, for selectors that learn

    def sample(self, rnd: Round, eligible: list[int], *, over_select: OverSelect) -> list[int]:
        """The nodes to ask; sets ``rnd.needed`` (or ``rnd.log.skipped`` and returns [])."""
        raise NotImplementedError

    def sample_size(self, num_nodes: int) -> int:
        """Nodes a round on ``num_nodes`` eligible nodes asks (for the start-up checks)."""
        raise NotImplementedError


class SelectorSampler(Sampler):
    """A selector picks the round's nodes from the eligible ones; the registry keeps history.

    The history (utility, speed, failures per node) is updated from the round's valid replies
    and durations (simulated round times of the clock, else measured push-to-pull times, else
    the reported compute time), and from late replies drained later (speed only).
    """

    def __init__(self, selector: Selector, *, min_nodes: int) -> None:
        self.selector = selector
        self.min_nodes = int(min_nodes)
        self.registry: ClientRegistry = ClientRegistry()

    def sample_size(self, num_nodes: int) -> int:
        return self.selector.sample_size(num_nodes)

    def sample(self, rnd: Round, eligible: list[int], *, over_select: OverSelect) -> list[int]:
        if rnd.asked is not None:  # a job for each free slot of the asynchronous driver
            rnd.needed = min(rnd.asked, len(eligible))
            selected = self.selector.select(
                eligible, registry=self.registry, server_round=rnd.number, count=rnd.needed
            ) if rnd.needed else []  # fmt: skip
            self.registry.on_selected(selected)
            return selected
        if len(eligible) < self.min_nodes:
            rnd.log.skipped = (
                f"{len(eligible)} nodes connected and eligible, min_train_nodes is {self.min_nodes}"
            )
            log(WARNING, "Round %d skipped: %s", rnd.number, rnd.log.skipped)
            return []
        rnd.needed = self.selector.sample_size(len(eligible))
        selected = self.selector.select(
            eligible,
            registry=self.registry,
            server_round=rnd.number,
            count=over_select(rnd.needed, len(eligible)),
        )
        self.registry.on_selected(selected)
        return selected

    def on_late(self, node: int, seconds: float) -> None:
        self.registry.on_duration(node, seconds)

    def on_accepted(self, rnd: Round, accepted: list[TrainReply]) -> None:
        done = set()
        for r in accepted:
            time_s = rnd.durations.get(r.node_id, r.metrics.get("compute_time_s"))
            self.registry.on_result(
                r.node_id,
                rnd.number,
                loss=reported_loss(r),
                num_examples=r.num_examples,
                duration_s=float(time_s) if isinstance(time_s, int | float) else None,
            )
            done.add(r.node_id)
        for node in rnd.log.selected:
            if node not in done:
                self.registry.on_failure(node)
                if node in rnd.durations:
                    self.registry.on_duration(node, rnd.durations[node])

    def state_dict(self) -> dict[str, Any]:
        return {"selector": self.selector.state_dict(), "registry": self.registry.state_dict()}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.selector.load_state_dict(state["selector"])
        self.registry.load_state_dict(state["registry"])

    def summary(self) -> str:
        return f"selection: {type(self.selector).__name__}"
