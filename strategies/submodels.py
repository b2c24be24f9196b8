"""Capacity-scaled sub-models: each node trains the width of the global model it can hold.

A budget phone and a flagship should not get the same model (HeteroFL, Diao et al. ICLR
2021; FjORD, Horvath et al. NeurIPS 2021; FedRolex, Alam et al. NeurIPS 2022). Every node
gets a maximum width ``p_max`` from its capability (:class:`Capacity`); the server sends it
only that slice of every hidden layer (:mod:`fl_ext.models.slicing`, found from the model's
graph), the node trains it and returns it, and the aggregation averages each coordinate over
the nodes that hold it (:mod:`fl_ext.aggregators.coverage`). Policies:

* ``static`` (HeteroFL): the leading ``p_max`` fraction of channels, every round;
* ``ordered_dropout`` (FjORD): the same slice is sent; the client trains, per batch, a random
  width ``p <= p_max`` of ``widths`` (nested leading slices), so every width stays usable;
* ``rolling`` (FedRolex): the window of channels rolls by one each round (``offset`` =
  round - 1, modulo each layer's width), so weak nodes train every channel over time;
* ``exclude``: the baseline of leaving weak devices out: only nodes of width 1 are eligible.

A node of width 1 trains the whole model (no view: FedAvg exactly).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from logging import WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import Message
from flwr.supercore import log

from clients.submodel import OFFSET_KEY, POLICIES, POLICY_KEY, WIDTH_KEY, WIDTHS_KEY
from fl_ext.compat import CLIENT_INFO, MAX_WIDTH_KEY
from fl_ext.models.slicing import SlicePlan
from fl_ext.params import ParamSpec
from fl_ext.selection.network import SimulatedNetwork
from fl_ext.validation import Rejection
from strategies.replies import reported_metrics
from strategies.round import Round
from strategies.stage import ConfigValue, Stage
from strategies.views import NodeView

ASSIGNMENTS = ("tiers", "network", "reported")


def check_widths(widths: Sequence[float]) -> tuple[float, ...]:
    """Widths in (0, 1], increasing, ending at 1 (the global model)."""
    values = tuple(float(w) for w in widths)
    if (
        not values
        or any(not 0 < w <= 1 for w in values)
        or list(values) != sorted(set(values))
        or values[-1] != 1.0
    ):
        raise ValueError(f"widths must be increasing values in (0, 1] ending at 1, got {widths}")
    return values


class Capacity:
    """Each node's maximum width, from one source of capability.

    ``tiers``: fixed shares of the nodes per width (the first nodes seen are split exactly by
    ``shares`` in id order, later ones drawn with those probabilities, seeded); ``network``:
    the simulated device's compute speed: the widest model whose relative training cost
    (parameters at that width / full) times the device's slowdown stays within
    ``max_relative_time``; ``reported``: the ``max-width`` a client reports in its
    client-info (its node config), the smallest width until it has reported.
    """

    def __init__(
        self,
        *,
        widths: Sequence[float],
        assign: str = "tiers",
        shares: Sequence[float] | None = None,
        max_relative_time: float = 2.0,
        seed: int = 0,
    ) -> None:
        self.widths = check_widths(widths)
        if assign not in ASSIGNMENTS:
            raise ValueError(f"assign must be one of {', '.join(ASSIGNMENTS)}, got {assign!r}")
        self.assign = assign
        shares = list(shares) if shares is not None else [1.0 / len(self.widths)] * len(self.widths)
        if len(shares) != len(self.widths) or any(s < 0 for s in shares) or sum(shares) <= 0:
            raise ValueError(
                f"shares must be {len(self.widths)} non-negative values (one per width), "
                f"got {shares}"
            )
        self.shares = np.array(shares, dtype=np.float64) / float(sum(shares))
        if not max_relative_time > 0:
            raise ValueError(f"max_relative_time must be > 0, got {max_relative_time}")
        self.max_relative_time = float(max_relative_time)
        self.seed = int(seed)
        self.network: SimulatedNetwork | None = None
        self.cost: dict[float, float] = dict.fromkeys(self.widths, 1.0)  # set by the stage
        self.known: dict[int, float] = {}

    def see(self, nodes: Sequence[int]) -> None:
        """Assign tiers to nodes seen for the first time (exact shares on the first batch)."""
        new = sorted(n for n in nodes if n not in self.known)
        if self.assign != "tiers" or not new:
            return
        if not self.known:
            counts = np.floor(self.shares * len(new)).astype(int)
            for i in np.argsort(-(self.shares * len(new) - counts))[: len(new) - counts.sum()]:
                counts[i] += 1
            tiers = np.repeat(np.arange(len(self.widths)), counts)
            for node, tier in zip(new, tiers, strict=True):
                self.known[node] = self.widths[int(tier)]
            return
        for node in new:
            rng = np.random.default_rng([self.seed, node & 0xFFFFFFFF, node >> 32])
            self.known[node] = self.widths[int(rng.choice(len(self.widths), p=self.shares))]

    def width(self, node: int) -> float:
        """The node's maximum width."""
        if self.assign == "tiers":
            self.see([node])
            return self.known[node]
        if self.assign == "reported":
            return self.known.get(node, self.widths[0])
        if self.network is None:
            raise ValueError("assign=network needs the simulated network (network=mixed|mobile)")
        speed = self.network.node(node).speed
        fits = [w for w in self.widths if speed * self.cost[w] <= self.max_relative_time]
        return fits[-1] if fits else self.widths[0]

    def report(self, node: int, value: object) -> None:
        """A client's reported ``max-width``: the largest of ``widths`` not above it."""
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            log(
                WARNING, "\t> node %d reported max-width %r: not a number > 0, ignored", node, value
            )
            return
        fits = [w for w in self.widths if w <= float(value) + 1e-12]
        self.known[node] = fits[-1] if fits else self.widths[0]

    def state_dict(self) -> dict[str, Any]:
        return {"known": {str(k): v for k, v in self.known.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.known = {int(k): float(v) for k, v in dict(state.get("known", {})).items()}


class SubModels(Stage):
    """Per-node slices of the global model by capacity (see the module docstring)."""

    name: ClassVar[str] = "submodels"
    requires = frozenset({"individual_updates", "coverage_aggregation", "node_views"})
    needs_fl_ext_client = True

    def __init__(self, *, plan: SlicePlan, capacity: Capacity, policy: str = "static") -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.plan, self.capacity, self.policy = plan, capacity, policy
        full = plan.widths_param_count(1.0)
        capacity.cost = {w: plan.widths_param_count(w) / full for w in capacity.widths}
        self._views: dict[tuple[float, int], NodeView] = {}
        self._spec: ParamSpec | None = None
        self._round_widths: dict[int, float] = {}
        self._tier: dict[float, dict[str, Any]] = {}  # this round's bytes and compute per width

    @property
    def widths(self) -> tuple[float, ...]:
        return self.capacity.widths

    def offset(self, rnd: Round) -> int:
        """The rolling window's start this round (0 for the other policies)."""
        return rnd.number - 1 if self.policy == "rolling" else 0

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        self.capacity.see(nodes)
        if self.policy == "exclude":
            return [n for n in nodes if self.capacity.width(n) >= 1.0]
        return nodes

    def on_replies(self, rnd: Round) -> None:
        """Measured bytes both ways and reported compute time, per width."""
        for msg in rnd.arrived:
            node = msg.metadata.src_node_id
            width = self._round_widths.get(node)
            if width is None:
                continue
            tier = self._tier.setdefault(width, {"up": 0.0, "down": 0.0, "compute": []})
            tier["up"] += rnd.reply_bytes.get(id(msg), 0)
            tier["down"] += rnd.bytes_down.get(node, 0)
            compute = reported_metrics(msg).get("compute_time_s")
            if isinstance(compute, int | float) and compute >= 0:
                tier["compute"].append(float(compute))

    def node_entries(self, rnd: Round, node: int) -> dict[str, ConfigValue]:
        width = self.capacity.width(node)
        self._round_widths[node] = width  # sent at width 1 too: ordered dropout, device limits
        entries: dict[str, ConfigValue] = {
            WIDTH_KEY: width,
            POLICY_KEY: self.policy,
            OFFSET_KEY: self.offset(rnd),
        }
        if self.policy == "ordered_dropout":
            entries[WIDTHS_KEY] = ",".join(f"{w:g}" for w in self.widths)
        return entries

    def node_view(self, rnd: Round, node: int) -> NodeView | None:
        width = self._round_widths.get(node, self.capacity.width(node))
        if width >= 1.0:
            return None
        spec = rnd.spec
        if spec != self._spec:
            self._views, self._spec = {}, spec
        key = (width, self.offset(rnd))
        if key not in self._views:
            # rolling windows move every round: keep only this round's views
            self._views = {k: v for k, v in self._views.items() if k[1] == key[1]}
            index = self.plan.indices(width, offset=key[1])
            self._views[key] = NodeView.of(
                f"w{width:g}-o{key[1]}", index.slice, rnd.global_named, index.flat_index(spec)
            )
        return self._views[key]

    def check_message(self, rnd: Round | None, msg: Message) -> Rejection | None:
        if self.capacity.assign == "reported" and msg.has_content():
            info = msg.content.config_records.get(CLIENT_INFO)
            if info is not None and MAX_WIDTH_KEY in info:
                self.capacity.report(msg.metadata.src_node_id, info[MAX_WIDTH_KEY])
        return None

    def metrics(self, rnd: Round) -> dict[str, float]:
        widths, self._round_widths = self._round_widths, {}
        tiers, self._tier = self._tier, {}
        out = {
            f"clients_width_{w:g}": float(sum(1 for v in widths.values() if v == w))
            for w in self.widths
        }
        for width, tier in tiers.items():
            out[f"bytes_up_w{width:g}"] = tier["up"]
            out[f"bytes_down_w{width:g}"] = tier["down"]
            if tier["compute"]:
                out[f"compute_w{width:g}_s"] = float(np.mean(tier["compute"]))
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.capacity.state_dict()

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.capacity.load_state_dict(state)

    def summary(self) -> str:
        tiers = ", ".join(f"{w:g}" for w in self.widths)
        return f"sub-models: {self.policy}, widths {tiers}, assigned by {self.capacity.assign}"
