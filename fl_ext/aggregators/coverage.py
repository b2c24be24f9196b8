"""Aggregation when clients hold different parts of the model (capacity-scaled sub-models).

HeteroFL / FjORD / FedRolex clients train slices of the global model, so a coordinate has an
update only from the clients that hold it. Treating the others' zeros as votes would shrink
every hidden unit the weak clients lack toward "no change". Instead the coordinates are
grouped by their set of holders (with nested or rolling slices there are few such sets), and
the rule runs once per group on that group's holders and columns: the weighted mean becomes
HeteroFL's per-coordinate mean, and a robust rule sees only real updates. A rule's state
(centered clipping's center, FLTrust's reference) is sliced to the group and written back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fl_ext.aggregators.state import AggregatorState

Rule = Callable[[torch.Tensor, torch.Tensor | None, AggregatorState], torch.Tensor]


@dataclass(frozen=True)
class HolderGroup:
    """Coordinates ``cols`` held by exactly the clients ``rows``."""

    rows: torch.Tensor  # int64 indices into the stacked updates
    cols: torch.Tensor  # int64 coordinates


@dataclass(frozen=True)
class CoverageStats:
    """What the per-coordinate aggregation did: how many coordinates, and how often held."""

    groups: int
    coordinates_updated: int
    coordinates_kept: int  # held by fewer clients than the rule needs: left unchanged
    min_holders: int  # fewest clients behind an updated coordinate
    mean_holders: float  # holders per coordinate, averaged over all coordinates


def holder_groups(held: torch.Tensor) -> list[HolderGroup]:
    """Group the columns of the bool ``[n, d]`` matrix by their pattern of holders."""
    if held.dim() != 2 or held.dtype != torch.bool:
        raise ValueError(f"held must be a bool [n, d] matrix, got {held.dtype} {tuple(held.shape)}")
    packed = np.ascontiguousarray(np.packbits(held.cpu().numpy(), axis=0).T)
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(first)))[:-1]
    groups = []
    for g, cols in enumerate(np.split(order, bounds)):
        rows = np.flatnonzero(held[:, int(first[g])].cpu().numpy())
        groups.append(HolderGroup(torch.from_numpy(rows), torch.from_numpy(cols.astype(np.int64))))
    return groups


def aggregate_by_coverage(
    updates: torch.Tensor,
    weights: torch.Tensor | None,
    held: torch.Tensor,
    rule: Rule,
    *,
    min_holders: int,
    state: AggregatorState | None = None,
) -> tuple[torch.Tensor, CoverageStats]:
    """The aggregate update, each coordinate over the clients that hold it.

    ``updates`` ``[n, d]`` (zeros where not held), ``weights`` ``[n]`` or None, ``held`` the
    bool ``[n, d]`` coverage; ``rule(x, w, state)`` aggregates a group's sub-matrix. A group
    with fewer than ``min_holders`` clients keeps its coordinates unchanged (zero update).
    Inputs are not modified; ``state`` is updated group by group.
    """
    if updates.shape != held.shape:
        raise ValueError(f"held {tuple(held.shape)} must match updates {tuple(updates.shape)}")
    if min_holders < 1:
        raise ValueError(f"min_holders must be >= 1, got {min_holders}")
    state = state if state is not None else AggregatorState()
    out = torch.zeros(updates.shape[1], dtype=updates.dtype)
    counts = held.sum(dim=0)
    groups = holder_groups(held)
    kept, updated_min = 0, None
    for group in groups:
        if len(group.rows) < min_holders:
            kept += len(group.cols)
            continue
        sub_state = AggregatorState(
            center=None if state.center is None else state.center[group.cols],
            reference=None if state.reference is None else state.reference[group.cols],
            round=state.round,
        )
        x = updates[group.rows][:, group.cols]
        w = None if weights is None else weights[group.rows]
        out[group.cols] = rule(x, w, sub_state).to(out.dtype)
        if sub_state.center is not None:
            if state.center is None:
                state.center = torch.zeros(updates.shape[1], dtype=sub_state.center.dtype)
            state.center[group.cols] = sub_state.center
        n = len(group.rows)
        updated_min = n if updated_min is None else min(updated_min, n)
    d = updates.shape[1]
    return out, CoverageStats(
        groups=len(groups),
        coordinates_updated=d - kept,
        coordinates_kept=kept,
        min_holders=int(updated_min or 0),
        mean_holders=float(counts.double().mean()) if d else 0.0,
    )
