"""A chain of pre-aggregators followed by a rule: what the strategy calls each round."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fl_ext.aggregators.base import Aggregator, NotEnoughInputs, check_updates
from fl_ext.aggregators.state import AggregatorState
from fl_ext.preagg.base import PreAggregator

_SEARCH_LIMIT = 100_000


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the GPU when one is present, else the CPU; a named GPU must exist."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a string (auto, cpu, cuda, cuda:N), got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N") from err
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (resolved.index or 0) >= count:
            raise ValueError(f"device {device!r} requested but this machine has {count} GPU(s)")
    return resolved


class RobustAggregation:
    """``rule(preagg_k(...preagg_1(updates)))``.

    Client weights reach the rule only when no pre-aggregator changed the rows (after mixing
    or bucketing a row no longer belongs to one client). The work runs on ``device``
    (``auto``: the GPU when present); the result and the state come back to the caller's device.
    """

    def __init__(
        self, *, rule: Aggregator, preagg: Sequence[PreAggregator] = (), device: str = "auto"
    ) -> None:
        if not isinstance(rule, Aggregator):
            raise ValueError(f"rule must be an Aggregator, got {type(rule).__name__}")
        for p in preagg:
            if not isinstance(p, PreAggregator):
                raise ValueError(f"pre-aggregators must be PreAggregator, got {type(p).__name__}")
        self.rule = rule
        self.preagg = tuple(preagg)
        self.device = resolve_device(device)

    @property
    def needs_reference(self) -> bool:
        """True when the rule needs the server's own update (FLTrust)."""
        return self.rule.needs_reference

    def rows_after_preagg(self, n: int) -> int:
        """How many vectors reach the rule from ``n`` updates."""
        for p in self.preagg:
            n = p.output_count(n)
        return n

    def min_inputs(self) -> int:
        """Smallest number of valid updates a round needs."""
        need = self.rule.min_inputs()
        for n in range(1, _SEARCH_LIMIT):
            if self.rows_after_preagg(n) >= need:
                return n
        raise ValueError(f"no number of updates satisfies {self.describe()}")

    def describe(self) -> str:
        """E.g. ``NNM -> Krum(f=3)``."""
        names = [type(p).__name__ for p in self.preagg]
        return " -> ".join([*names, f"{type(self.rule).__name__}(f={self.rule.f})"])

    def check_n(self, n: int) -> None:
        """Raise :class:`NotEnoughInputs` (naming the rule's requirement) if ``n`` is too few."""
        if n < self.min_inputs():
            raise NotEnoughInputs(
                f"{self.describe()} needs at least {self.min_inputs()} updates "
                f"({type(self.rule).__name__}: {self.rule.requirement()}), got {n}"
            )

    def __call__(
        self,
        updates: torch.Tensor,
        weights: torch.Tensor | None = None,
        state: AggregatorState | None = None,
    ) -> torch.Tensor:
        check_updates(updates, weights)  # once here; pre-aggregators keep values finite
        self.check_n(updates.shape[0])
        state = state or AggregatorState()
        home = updates.device
        x = updates.to(self.device)
        state.center = None if state.center is None else state.center.to(self.device)
        state.reference = None if state.reference is None else state.reference.to(self.device)
        for p in self.preagg:
            x = p(x, state)
        used = weights if not self.preagg and self.rule.uses_weights else None
        out = self.rule.aggregate_with_state(x, used, state)
        state.center = None if state.center is None else state.center.to(home)
        state.reference = None if state.reference is None else state.reference.to(home)
        return out.to(home)
