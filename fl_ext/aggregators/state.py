"""Explicit state of stateful rules, owned by the strategy (never hidden in the rule)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AggregatorState:
    """What a rule may read and update between rounds.

    ``center``: centered clipping's starting point (its previous aggregate).
    ``reference``: FLTrust's server update computed on the root data set this round.
    ``round``: the server round, to seed randomized pre-aggregation (bucketing).
    """

    center: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    round: int = 0

    def state_dict(self) -> dict[str, object]:
        """Serializable form (checkpoints)."""
        return {
            "center": None if self.center is None else self.center.clone(),
            "round": self.round,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore :meth:`state_dict` output."""
        center = state.get("center")
        if center is not None and not isinstance(center, torch.Tensor):
            raise ValueError(
                f"state 'center' must be a tensor or None, got {type(center).__name__}"
            )
        self.center = center
        round_ = state.get("round", 0)
        if not isinstance(round_, int):
            raise ValueError(f"state 'round' must be an int, got {round_!r}")
        self.round = round_
