"""Every reply of a round checked in one order; bad ones counted and logged, never raised.

Train replies: an expected sender (selected, once), the stages' checks of the raw message
(fl-ext's version and schema), :mod:`strategies.replies` (record shape, counts, metrics,
the codec payload), the stages' checks of the parsed reply, the decoder's flat update, its
norm (float64). Error replies go to the stages that can explain their code (incompatible,
declined). Evaluate replies get the message checks and their own parse.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import INFO, WARNING

import torch
from flwr.app import Message
from flwr.supercore import log

from fl_ext.validation import Rejection, RejectReason, check_update_norm, update_norm
from strategies.assembly import first
from strategies.decoding import Decoder
from strategies.replies import EvaluateReply, TrainReply, parse_evaluate_reply
from strategies.round import Round
from strategies.round_log import RoundLog
from strategies.stage import Stage


@dataclass
class ReplyChecks:
    """The checks of one strategy: its stages, decoder and limits."""

    stages: Sequence[Stage]
    decoder: Decoder
    max_examples: int | None
    max_update_norm: float | None
    required_metrics: tuple[str, ...] = ()

    def train(
        self, rnd: Round, replies: Iterable[Message]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        """The valid updates, stacked (one row each), and their replies; counts in ``rnd.log``."""
        replies = list(replies)
        updates = torch.empty((len(replies), rnd.spec.size), dtype=torch.float32)
        accepted: list[TrainReply] = []
        selected, seen = set(rnd.log.selected), set[int]()
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                rnd.log.failed += 1
                self.report_error(rnd, msg)
                continue
            rnd.log.replied += 1
            parsed = self._parse(rnd, msg, expected=node in selected and node not in seen)
            seen.add(node)
            if isinstance(parsed, TrainReply):
                row = self._update(rnd, parsed, updates[len(accepted)])
                parsed = check_update_norm(update_norm(row), self.max_update_norm) or parsed
            if isinstance(parsed, Rejection):
                rnd.reject(node, parsed)
                continue
            accepted.append(parsed)
        return updates[: len(accepted)], accepted

    def _update(self, rnd: Round, reply: TrainReply, out: torch.Tensor) -> torch.Tensor:
        """The reply's update in global coordinates; a view's node also gets its coverage."""
        view = rnd.views.get(reply.node_id)
        if view is None:
            return self.decoder.to_update(rnd, reply, out)
        local = self.decoder.to_update(rnd, reply, torch.empty(view.spec.size))
        if view.partial:  # its missing coordinates are not votes
            rnd.coverage[reply.node_id] = view.mask()
        return view.to_global(local, out)

    def _parse(self, rnd: Round, msg: Message, *, expected: bool) -> TrainReply | Rejection:
        if not expected:
            return Rejection(RejectReason.MALFORMED, "reply from a node not selected or duplicated")
        rejection = first(stage.check_message(rnd, msg) for stage in self.stages)
        if rejection is not None:
            return rejection
        parsed = self.decoder.parse(
            rnd, msg, max_examples=self.max_examples, required_metrics=self.required_metrics
        )
        if isinstance(parsed, Rejection):
            return parsed
        return first(stage.check(rnd, parsed) for stage in self.stages) or parsed

    def evaluate(
        self, rnd: Round | None, rlog: RoundLog, replies: Iterable[Message]
    ) -> list[EvaluateReply]:
        """The valid evaluate replies; counts and bytes in ``rlog``."""
        accepted: list[EvaluateReply] = []
        for msg in replies:
            if msg.has_error():
                rlog.eval_failed += 1
                self.report_error(rnd, msg)
                continue
            rlog.eval_replied += 1
            parsed = first(
                stage.check_message(rnd, msg) for stage in self.stages
            ) or parse_evaluate_reply(msg, max_examples=self.max_examples)
            if isinstance(parsed, Rejection):
                rlog.eval_rejected += 1
                node = msg.metadata.src_node_id
                log(WARNING, "\t> evaluate reply from node %d rejected: %s", node, parsed)
                continue
            accepted.append(parsed)
        return accepted

    def report_error(self, rnd: Round | None, msg: Message) -> None:
        """An error reply: the stage that knows its code acts on it; else it is logged."""
        node, code, reason = msg.metadata.src_node_id, msg.error.code, msg.error.reason or ""
        if rnd is None or not any(stage.on_error(rnd, node, code, reason) for stage in self.stages):
            log(INFO, "\t> node %d failed: %s", node, reason)
