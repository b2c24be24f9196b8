"""The stage protocol: no-op hooks the round engine calls in one fixed phase order.

Every part of a round is a :class:`Stage`: capabilities (FedProx, codecs, DP-SGD bookkeeping,
simulated attacks, the clock, early stopping) and the three replaceable slots, which are
stages with one more method (the sampler, the update decoder, the aggregation). A stage
overrides only the hooks it needs. Stages never call each other: what one decides reaches
the others through the :class:`~strategies.round.Round` (its fields and its log).

Phase order (``strategies.fedavg.FlExtFedAvg`` calls them, stages in list order):

1. ``stop_reason(server_round, nodes)``: end the run before this round (privacy budget);
2. ``eligible(rnd, nodes)``: filter the nodes a round may ask (compatibility, quarantine,
   availability, budget, policy); ``eligible_to_evaluate(nodes)`` for federated evaluation;
3. the sampler picks the asked nodes and sets ``rnd.needed``;
4. ``entries(rnd)`` / ``node_entries(rnd, node)``: ConfigRecord entries of the train messages
   (every message / one node's); ``broadcast(rnd, arrays)`` may transform what is sent;
   ``node_view(rnd, node)``: the slice of the model a node trains instead of all of it
   (:mod:`strategies.views`; its reply is checked against the view and mapped back);
5. the driver exchanges the messages; the clock decides which replies count;
6. ``on_replies(rnd)``: every reply that came back (``rnd.replies``) and those that reached
   the server (``rnd.arrived``): spends recorded, uploads measured;
7. ``on_error(rnd, node, code, reason)``: an error reply; True if the stage explains it;
8. ``check_message(rnd, msg)``: a raw reply (e.g. fl-ext's version/schema), before parsing;
9. :mod:`strategies.replies` parses, the decoder makes the flat update;
   ``check(rnd, reply)``: a typed Rejection (never raise);
10. ``on_accepted(rnd, accepted)``: the valid replies (histories, the server's reference);
    ``on_late(node, seconds)`` whenever a reply of an earlier round is drained;
11. ``transform(rnd, updates, accepted)``: may change the stacked updates (simulated attacks);
12. the aggregation (then the server optimizer) makes the new global model;
13. ``metrics(rnd)``: the stage's figures for the round;
14. ``after_round(server_round, metrics)``: end the run after this round (early stopping);
    ``replacement()``: the model to keep instead of the round's (automatic rollback).

``state_dict()`` / ``load_state_dict(state, first_round=)`` carry a stage across a restart; the
checkpoint holds ``{stage name: state}`` (numpy arrays at the top level of a state go to the
checkpoint's tensor file).

``requires`` / ``provides`` are checked once, when the strategy is built
(:func:`unmet_requirements`): e.g. a robust rule requires ``individual_updates``, which the
synchronous driver provides and a secure-aggregation driver does not. ``needs_fl_ext_client``
marks what only an fl-ext client (or its client mods) can serve.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from flwr.app import ArrayRecord, Message

from fl_ext.validation import Rejection

if TYPE_CHECKING:
    from strategies.replies import TrainReply
    from strategies.round import Round
    from strategies.views import NodeView

ConfigValue = int | float | str | bool


class Stage:
    """No-op hooks; subclasses override what they need (see the module docstring)."""

    name: ClassVar[str] = "stage"
    requires: frozenset[str] = frozenset()
    provides: frozenset[str] = frozenset()
    needs_fl_ext_client: bool = False

    def stop_reason(self, server_round: int, nodes: Sequence[int]) -> str | None:
        return None

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        return nodes

    def eligible_to_evaluate(self, nodes: list[int]) -> list[int]:
        return nodes

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        return {}

    def node_entries(self, rnd: Round, node: int) -> dict[str, ConfigValue]:
        return {}

    def broadcast(self, rnd: Round, arrays: ArrayRecord) -> ArrayRecord:
        return arrays

    def node_view(self, rnd: Round, node: int) -> NodeView | None:
        """The view of the global model ``node`` trains this round (None: all of it)."""
        return None

    def on_replies(self, rnd: Round) -> None:
        """See every reply of the round (``rnd.replies``, ``rnd.arrived``)."""

    def on_error(self, rnd: Round, node: int, code: int, reason: str) -> bool:
        return False

    def check_message(self, rnd: Round | None, msg: Message) -> Rejection | None:
        return None

    def check(self, rnd: Round, reply: TrainReply) -> Rejection | None:
        return None

    def on_accepted(self, rnd: Round, accepted: list[TrainReply]) -> None:
        """See the round's valid replies, before any transform."""

    def on_late(self, node: int, seconds: float) -> None:
        """A reply of an earlier round drained after its round closed (its speed)."""

    def transform(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        return updates, accepted

    def metrics(self, rnd: Round) -> dict[str, float]:
        return {}

    def after_round(self, server_round: int, metrics: dict[str, float]) -> str | None:
        """Add to the round's final metrics; a reason ends the run after this round."""
        return None

    def artifacts(self) -> dict[str, str | bytes]:
        """Files for the run's record, by artifact path (text or PNG bytes); drained."""
        return {}

    def replacement(self) -> OrderedDict[str, np.ndarray] | None:
        """After ``after_round``: the global model to keep instead of the round's (rollback)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        """Restore :meth:`state_dict` output (nothing for a stateless stage)."""

    def summary(self) -> str | None:
        """One line for the strategy's start-up summary, or None."""
        return None

    def describe_requirement(self) -> str:
        """How an unmet requirement names this part."""
        return type(self).__name__


def unmet_requirements(parts: Iterable[Stage], *, driver: str, provided: Iterable[str]) -> str:
    """Every requirement that neither the driver nor any part provides, in one message.

    '' when all are met; e.g. "GeometricMedian needs individual_updates, which neither the
    secure-aggregation driver nor any other part provides".
    """
    parts = list(parts)
    have = set(provided).union(*(p.provides for p in parts))
    return "; ".join(
        f"{p.describe_requirement()} needs {need}, which neither {driver} nor any other part "
        f"provides{HINTS.get(need, '')}"
        for p in parts
        for need in sorted(p.requires - have)
    )


def parts_state(parts: Iterable[Stage]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``{part name: its state}`` (JSON-able) and the parts' arrays under ``name.key``."""
    state: dict[str, Any] = {}
    tensors: dict[str, np.ndarray] = {}
    for part in parts:
        saved = part.state_dict()
        state[part.name] = {k: v for k, v in saved.items() if not isinstance(v, np.ndarray)}
        for key, value in saved.items():
            if isinstance(value, np.ndarray):
                tensors[f"{part.name}.{key}"] = value
    return state, tensors


def load_parts_state(
    parts: Iterable[Stage],
    state: dict[str, Any],
    tensors: dict[str, np.ndarray],
    *,
    first_round: int,
) -> None:
    """Give every part its saved state (:func:`parts_state` output) back."""
    if "train_selector" in state:
        raise ValueError(
            "this checkpoint was written before the round engine (one state per part): "
            "start a new run, or roll back with the fl-ext version that wrote it"
        )
    for part in parts:
        saved = dict(state.get(part.name, {}))
        prefix = f"{part.name}."
        saved.update({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        if saved:
            part.load_state_dict(saved, first_round=first_round)


HINTS = {
    "node_views": (
        " (each node trains its own slice of the model: only the synchronous driver sends "
        "per-node slices; use driver=sync)"
    ),
    "coverage_aggregation": (
        " (every coordinate averaged over the clients that hold it: the robust pipeline does "
        "it; client-level DP's mechanism does not, its sensitivity assumes whole updates)"
    ),
    "reference_update": (
        " (the server's own update each round: give the strategy reference_update, the "
        "dataset a root set with dataset.root_size)"
    ),
}
