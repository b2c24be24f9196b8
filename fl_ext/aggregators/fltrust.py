"""FLTrust (Cao et al., 2021): trust by direction agreement with the server's own update."""

from __future__ import annotations

import torch

from fl_ext.aggregators.base import Aggregator, check_f
from fl_ext.aggregators.mean import weighted_mean
from fl_ext.aggregators.state import AggregatorState


def fltrust(updates: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """``sum_i ReLU(cos(x_i, g0)) * (||g0|| / ||x_i||) x_i / sum_i ReLU(cos(x_i, g0))``.

    Returns zeros when no update points in the reference's half-space (all trust 0).
    """
    x = updates.double()
    g0 = reference.double()
    g0_norm = torch.linalg.vector_norm(g0)
    norms = torch.linalg.vector_norm(x, dim=1)
    if float(g0_norm) == 0.0:
        return torch.zeros_like(updates[0])
    cos = (x @ g0) / (norms.clamp(min=1e-300) * g0_norm)
    trust = torch.relu(cos)
    trust[norms == 0] = 0.0
    if float(trust.sum()) == 0.0:
        return torch.zeros_like(updates[0])
    scale = trust * g0_norm / norms.clamp(min=1e-300)  # trust x norm-equalising factor
    factor = float(scale.sum() / trust.sum())  # weighted_mean divides by sum(scale)
    return (weighted_mean(updates, scale).double() * factor).to(updates.dtype)


class FLTrust(Aggregator):
    """Needs the server's update on its root data set in ``state.reference`` every round.

    ``f`` is recorded only (FLTrust needs no bound on the number of Byzantine clients).
    """

    needs_reference = True

    def __init__(self, *, f: int = 0) -> None:
        self.f = check_f(f)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        raise ValueError("FLTrust needs the server's reference update: use aggregate_with_state")

    def aggregate_with_state(
        self, updates: torch.Tensor, weights: torch.Tensor | None, state: AggregatorState
    ) -> torch.Tensor:
        """Aggregate against ``state.reference`` (the root-data update of this round)."""
        if state.reference is None or state.reference.shape != updates[0].shape:
            raise ValueError("FLTrust needs state.reference with the updates' shape")
        return fltrust(updates, state.reference)
