"""FlexLoRA's aggregation: the exact weighted mean of the adapters' products, re-factored.

Clients of a lower rank (:mod:`strategies.lora_ranks`) hold the leading ranks; their factors
are zero beyond them, so the mean is still the exact mean of their products.

Averaging LoRA's A and B separately (FlowerTune) is inexact: mean(B) mean(A) != mean(B A).
This aggregation rebuilds each client's factors (the round's global adapters plus its
update), takes ``sum_i w_i s B_i A_i`` per adapted layer in float64 and factors it back to
the rank by truncated SVD (:func:`fl_ext.models.lora.flexlora_states`, the best rank-r
approximation); the update is the new factors minus the global ones. Weights are the capped
example counts, as in FedAvg. It fills the aggregation slot in place of the plain mean.
"""

from __future__ import annotations

from collections import OrderedDict
from logging import WARNING

import numpy as np
import torch
from flwr.supercore import log

from fl_ext.aggregators import capped_example_weights
from fl_ext.models.lora import flexlora_states
from strategies.aggregation import Aggregation
from strategies.replies import TrainReply
from strategies.round import Round


class LoraProductMean(Aggregation):
    """``truncate_r(sum_i w_i s B_i A_i)`` per adapted layer (FlexLoRA, same rank for all)."""

    requires = frozenset({"individual_updates"})

    def __init__(
        self, *, alpha: float, min_replies: int = 1, weight_cap_factor: float | None = 2.0
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.alpha, self.min_replies = float(alpha), int(min_replies)
        self.weight_cap_factor = weight_cap_factor

    def min_inputs(self) -> int:
        return self.min_replies

    def aggregate(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> torch.Tensor | None:
        if len(accepted) < self.min_replies:
            rnd.log.skipped = f"{len(accepted)} valid replies; FlexLoRA needs {self.min_replies}"
            log(WARNING, "Round %d skipped: %s", rnd.number, rnd.log.skipped)
            return None
        base = rnd.global_flat.double()
        states = []
        for reply, row in zip(accepted, updates, strict=True):
            factors = base + row.double()
            view = rnd.views.get(reply.node_id)
            if view is not None:  # a lower-rank client: its factors are zero beyond its rank
                factors = torch.where(view.mask(), factors, torch.zeros_like(factors))
            states.append(rnd.spec.unflatten(factors.float()))
        counts = np.array([r.num_examples for r in accepted], dtype=np.float64)
        weights = capped_example_weights(counts, self.weight_cap_factor)
        (merged,) = flexlora_states(
            states, weights=weights / weights.sum(), alpha=self.alpha,
            ranks=[self._rank(states[0])],
        )  # fmt: skip
        new = rnd.spec.flatten(OrderedDict((k, merged[k]) for k in rnd.spec.names))
        return new - rnd.global_flat

    def preview(self, rnd: Round, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.mean(dim=0)

    @staticmethod
    def _rank(state: OrderedDict[str, np.ndarray]) -> int:
        first = next(k for k in state if ".lora_A." in k)
        return int(state[first].shape[0])

    def describe(self) -> str:
        return "FlexLoRA (exact product mean, truncated SVD)"
