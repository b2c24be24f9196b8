"""The decoder slot: a checked reply becomes one flat update (reply minus the global model).

:class:`Decoder` is the dense default; :class:`strategies.compression.Compression` fills the
slot when clients send codec payloads (parsed and checked against the node's codec in
:mod:`strategies.replies`, which puts the decoded update under ``UPDATE_KEY``).
"""

from __future__ import annotations

import torch
from flwr.app import Message

from fl_ext.codecs import Codec
from fl_ext.validation import Rejection
from strategies.replies import UPDATE_KEY, TrainReply, parse_train_reply
from strategies.round import Round
from strategies.stage import Stage


class Decoder(Stage):
    """Dense updates: the reply's arrays minus the round's global model."""

    name = "decoder"

    def codec_for(self, node: int) -> Codec | None:
        """The codec ``node`` encoded with this round (None: dense arrays)."""
        return None

    def parse(
        self,
        rnd: Round,
        msg: Message,
        *,
        max_examples: int | None,
        required_metrics: tuple[str, ...],
    ) -> TrainReply | Rejection:
        """The reply's structure checked (:func:`strategies.replies.parse_train_reply`)."""
        return parse_train_reply(
            msg,
            rnd.spec_for(msg.metadata.src_node_id),
            max_examples=max_examples,
            required_metrics=required_metrics,
            codec=self.codec_for(msg.metadata.src_node_id),
        )

    def to_update(self, rnd: Round, reply: TrainReply, out: torch.Tensor) -> torch.Tensor:
        """Write the reply's flat update into ``out`` (a row of the round's update matrix).

        For a node that trained a view, ``out`` has the view's size (the checks map it back).
        """
        if UPDATE_KEY in reply.arrays:  # a decoded codec payload: already the update
            return out.copy_(torch.from_numpy(reply.arrays[UPDATE_KEY]))
        spec = rnd.spec_for(reply.node_id)
        return spec.flatten(reply.arrays, out=out).sub_(rnd.base_for(reply.node_id))
