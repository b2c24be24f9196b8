"""Per-node views of the global model: what a node trains when it cannot hold all of it.

A weak device trains a slice of the global model (capacity-scaled sub-models: HeteroFL, FjORD,
FedRolex; :mod:`strategies.submodels`). A stage that decides so returns a :class:`NodeView`
from ``node_view(rnd, node)``; the engine then sends that node ``view.send(global)``, checks
its reply against ``view.spec`` / ``view.schema``, and maps the node's update back into the
global coordinates with ``view.to_global``, which also says which coordinates the node held
(``rnd.coverage``). The aggregation then averages every coordinate over the nodes that hold
it (:func:`fl_ext.aggregators.coverage.aggregate_by_coverage`), never counting a node that
did not train a coordinate as a vote for "no change".
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from fl_ext.compat import schema_hash
from fl_ext.params import ParamSpec

VIEW_KEY = "model-view"
"""The train message's entry naming the view a node trains (its arrays are that slice)."""

SliceFn = Callable[[Mapping[str, np.ndarray]], "OrderedDict[str, np.ndarray]"]
"""Named global arrays -> the node's named arrays."""


@dataclass(frozen=True)
class NodeView:
    """A slice of the global model: the arrays at ``flat_index`` of the global flat vector.

    ``key`` names the view in the node's messages (nodes with the same key get the same
    message); ``slicer`` makes the node's named arrays from the global ones.
    """

    key: str
    spec: ParamSpec
    flat_index: np.ndarray  # int64 [spec.size]: position of each node value in the global vector
    global_size: int
    schema: str  # the model schema the node reports for this view (names, shapes, dtypes)
    slicer: SliceFn = field(repr=False, compare=False)
    # True: the node's missing coordinates are not votes (aggregated over holders only);
    # False: its zeros count (zero-padded LoRA ranks, whose mean is the exact product mean)
    partial: bool = True

    @classmethod
    def of(
        cls,
        key: str,
        slicer: SliceFn,
        global_named: Mapping[str, np.ndarray],
        flat_index: np.ndarray,
        *,
        partial: bool = True,
    ) -> NodeView:
        """The view ``slicer`` makes of ``global_named`` (its spec taken from one slice)."""
        sliced = slicer(global_named)
        spec = ParamSpec.of(sliced)
        index = np.asarray(flat_index, dtype=np.int64)
        size = ParamSpec.of(global_named).size
        if index.shape != (spec.size,) or (index.size and (index.min() < 0 or index.max() >= size)):
            raise ValueError(
                f"view {key!r}: flat_index must hold {spec.size} positions in [0, {size}), "
                f"got shape {index.shape}"
            )
        return cls(
            key=key,
            spec=spec,
            flat_index=index,
            global_size=size,
            schema=schema_hash(sliced),
            slicer=slicer,
            partial=partial,
        )

    def send(self, global_named: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        """The arrays the node receives."""
        return self.slicer(global_named)

    def base(self, global_flat: torch.Tensor) -> torch.Tensor:
        """The flat model the node started from (its update is relative to it)."""
        return global_flat[torch.from_numpy(self.flat_index)]

    def to_global(self, local_update: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the node's update into ``out`` (global coordinates; zero where not held)."""
        out.zero_()
        out[torch.from_numpy(self.flat_index)] = local_update
        return out

    def mask(self) -> torch.Tensor:
        """Bool ``[global_size]``: the coordinates this node trains."""
        held = torch.zeros(self.global_size, dtype=torch.bool)
        held[torch.from_numpy(self.flat_index)] = True
        return held
