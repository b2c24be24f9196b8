"""Per-client LoRA ranks: a weak device trains the leading ranks of the global adapters.

The global adapters have rank R (``adapter.rank``); a node of capacity share c trains rank
``r = ceil(c R)`` of ``adapter.ranks``: the leading r rows of every A and columns of every B
(:class:`~strategies.views.NodeView` slices), with the scale ``alpha r / R`` so that every
party's ``s B A`` means the same. Its update is zero on the ranks it lacks and those zeros
count (``partial=False``): the weighted mean of zero-padded factors is the exact mean of the
products under FFA (shared A), and FlexLoRA (:class:`strategies.lora_aggregation.
LoraProductMean`) re-factors the exact mean of the zero-padded products, whose truncated SVD
orders the ranks by singular value, so a rank-r client's leading slice is the best rank-r
approximation of the global adapter (FlexLoRA's per-client truncation).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fl_ext.params import ParamSpec
from strategies.round import Round
from strategies.stage import ConfigValue, Stage
from strategies.submodels import Capacity
from strategies.views import NodeView

RANK_KEY = "adapter-rank"  # the node's rank this round (below the global one)


def rank_slices(spec: ParamSpec, rank: int) -> dict[str, tuple[slice, ...]]:
    """For every adapter tensor: the slices that keep its leading ``rank`` ranks."""
    out: dict[str, tuple[slice, ...]] = {}
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        if ".lora_A." in name:  # [R, in, ...]: rows
            out[name] = (slice(0, rank), *tuple(slice(None) for _ in shape[1:]))
        elif ".lora_B." in name:  # [out, R, ...]: columns
            out[name] = (slice(None), slice(0, rank), *tuple(slice(None) for _ in shape[2:]))
        else:
            raise ValueError(f"{name!r} is not a LoRA A or B tensor: cannot slice ranks")
    return out


def rank_view(spec: ParamSpec, global_named: Mapping[str, np.ndarray], rank: int) -> NodeView:
    """The view of rank ``rank`` of the global adapters (zeros elsewhere count)."""
    slices = rank_slices(spec, rank)
    positions, offset = [], 0
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        size = int(np.prod(shape))
        positions.append(np.arange(offset, offset + size).reshape(shape)[slices[name]].ravel())
        offset += size

    def slicer(named: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        return OrderedDict((k, np.ascontiguousarray(named[k][slices[k]])) for k in spec.names)

    return NodeView.of(
        f"rank{rank}", slicer, global_named, np.concatenate(positions), partial=False
    )


class AdapterRanks(Stage):
    """Each node's LoRA rank from its capacity (see the module docstring)."""

    name: ClassVar[str] = "adapter_ranks"
    requires = frozenset({"individual_updates", "node_views"})
    needs_fl_ext_client = True

    def __init__(self, *, rank: int, ranks: Sequence[int], capacity: Capacity) -> None:
        ranks = sorted({int(r) for r in ranks})
        if not ranks or ranks[0] < 1 or ranks[-1] != rank:
            raise ValueError(
                f"adapter.ranks must be ranks >= 1 ending at adapter.rank={rank}, got {ranks}"
            )
        self.rank, self.ranks, self.capacity = int(rank), ranks, capacity
        self._views: dict[int, NodeView] = {}
        self._spec: ParamSpec | None = None
        self._round: dict[int, int] = {}

    def rank_of(self, node: int) -> int:
        """The node's rank: the largest of ``ranks`` within its capacity share of the rank."""
        share = self.capacity.width(node)
        fits = [r for r in self.ranks if r <= math.ceil(share * self.rank - 1e-9)]
        return fits[-1] if fits else self.ranks[0]

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        self.capacity.see(nodes)
        return nodes

    def node_entries(self, rnd: Round, node: int) -> dict[str, ConfigValue]:
        self._round[node] = self.rank_of(node)
        return {RANK_KEY: self._round[node]}

    def node_view(self, rnd: Round, node: int) -> NodeView | None:
        rank = self._round.get(node, self.rank_of(node))
        if rank >= self.rank:
            return None
        if rnd.spec != self._spec:
            self._views, self._spec = {}, rnd.spec
        if rank not in self._views:
            self._views[rank] = rank_view(rnd.spec, rnd.global_named, rank)
        return self._views[rank]

    def metrics(self, rnd: Round) -> dict[str, float]:
        ranks, self._round = self._round, {}
        return {
            f"clients_rank_{r}": float(sum(1 for v in ranks.values() if v == r)) for r in self.ranks
        }

    def state_dict(self) -> dict[str, Any]:
        return self.capacity.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.capacity.load_state_dict(state)

    def summary(self) -> str:
        return f"LoRA ranks per client: {self.ranks}, assigned by {self.capacity.assign}"
