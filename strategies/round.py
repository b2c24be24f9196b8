"""One round's state, in one value: made when the round is configured, dropped when it ends.

Everything that belongs to a round (the global model it started from, who was available,
selected and needed, the per-node bytes and epochs sent, the measured reply times of the
exchange, what is still in flight, and the round's log) lives here rather than in fields of
the strategy, so ``aggregate_train`` reads exactly what its ``configure_train`` decided,
whether the strategy's own loop or Flower's ``Strategy.start`` drives them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import WARNING
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import Message
from flwr.supercore import log

from fl_ext.compat import schema_hash
from fl_ext.params import ParamSpec
from fl_ext.validation import Rejection
from strategies.round_log import RoundLog

if TYPE_CHECKING:
    from strategies.replies import TrainReply
from strategies.views import NodeView


@dataclass
class Round:
    """What one round decided and measured; stages read it and add to it."""

    number: int
    spec: ParamSpec
    global_named: OrderedDict[str, np.ndarray]
    global_flat: torch.Tensor
    schema: str
    log: RoundLog
    available: list[int] = field(default_factory=list)  # eligible for training this round
    needed: int = 0  # updates the round waits for
    asked: int | None = None  # asynchronous driver: ask this many now (one free node is enough)
    bytes_down: dict[int, int] = field(default_factory=dict)  # per node, serialized
    epochs: dict[int, int] = field(default_factory=dict)  # local epochs asked per node
    reply_seconds: dict[int, float] = field(default_factory=dict)  # measured, push to pull
    left_in_flight: int = 0  # messages not answered when the train exchange stopped
    replies: list[Message] = field(default_factory=list)  # every train reply that came back
    arrived: list[Message] = field(default_factory=list)  # those that reached the server (clock)
    reply_bytes: dict[int, int] = field(default_factory=dict)  # wire size by id(reply)
    durations: dict[int, float] = field(default_factory=dict)  # round time per answering node
    max_update_norm: float | None = None  # an update with a larger L2 norm is rejected
    reference: torch.Tensor | None = None  # the server's own update (FLTrust), if made
    masked: dict[int, np.ndarray] = field(default_factory=dict)  # secure aggregation's inputs
    secure_sum: torch.Tensor | None = None  # their unmasked weighted mean (None: abandoned)
    secure: dict[str, float] | None = None  # the protocol's parameters and telemetry
    updates: torch.Tensor | None = None  # what the aggregation got (after the transforms)
    accepted: list[TrainReply] = field(default_factory=list)  # their replies, row by row
    aggregate: torch.Tensor | None = None  # the aggregation's result (before a server step)
    status: dict[int, str] = field(default_factory=dict)  # per node, e.g. "quarantined"
    views: dict[int, NodeView] = field(default_factory=dict)  # nodes that train a slice
    coverage: dict[int, torch.Tensor] = field(default_factory=dict)  # their held coordinates
    # the aggregation as an omniscient attacker evaluates it (its state untouched)
    preview: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def start(
        cls,
        number: int,
        global_named: OrderedDict[str, np.ndarray],
        *,
        max_update_norm: float | None = None,
    ) -> Round:
        """A fresh round from the global model it trains."""
        spec = ParamSpec.of(global_named)
        schema = schema_hash(global_named)
        return cls(
            number=number,
            spec=spec,
            global_named=global_named,
            global_flat=spec.flatten(global_named),
            schema=schema,
            log=RoundLog(number),
            max_update_norm=max_update_norm,
        )

    def spec_for(self, node: int) -> ParamSpec:
        """The arrays ``node`` was sent and must return (its view's, else the global spec)."""
        view = self.views.get(node)
        return view.spec if view is not None else self.spec

    def schema_for(self, node: int) -> str:
        """The model schema ``node`` must report."""
        view = self.views.get(node)
        return view.schema if view is not None else self.schema

    def base_for(self, node: int) -> torch.Tensor:
        """The flat model ``node`` started from: its update is its reply minus this."""
        view = self.views.get(node)
        return view.base(self.global_flat) if view is not None else self.global_flat

    def reject(self, node: int, rejection: Rejection) -> None:
        """Count and log a refused reply (the reason is in the round's metrics)."""
        self.log.rejected[rejection.reason.value] += 1
        log(WARNING, "\t> reply from node %d rejected: %s", node, rejection)
