"""Bucketing (Karimireddy et al., 2022): average random buckets of ``s`` updates."""

from __future__ import annotations

import math

import torch

from fl_ext.aggregators.state import AggregatorState
from fl_ext.preagg.base import PreAggregator


class Bucketing(PreAggregator):
    """Shuffle the updates (seeded by ``seed`` and the round), average consecutive groups of ``s``.

    The last bucket may be smaller. Produces ``ceil(n / s)`` vectors.
    """

    def __init__(self, *, s: int = 2, seed: int = 0) -> None:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"bucket size s must be an integer >= 1, got {s!r}")
        self.s, self.seed = s, int(seed)

    def output_count(self, n: int) -> int:
        return math.ceil(n / self.s)

    def __call__(self, updates: torch.Tensor, state: AggregatorState | None = None) -> torch.Tensor:
        n = updates.shape[0]
        round_ = state.round if state is not None else 0
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + round_)
        perm = torch.randperm(n, generator=generator)
        buckets = [perm[i : i + self.s] for i in range(0, n, self.s)]
        return torch.stack([updates[b].double().mean(dim=0).to(updates.dtype) for b in buckets])
