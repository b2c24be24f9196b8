"""``CodecMod``: fl-ext's update compression around a user's own ClientApp.

When the server compresses (``strategies.compression.Compression``), a train message's config
carries the codec specs (``codec-up``, ``codec-ef``, ``codec-seed``, ``codec-down``; see
:mod:`clients.codec_transport`). Around the app's train function this mod

1. decodes a compressed broadcast (``codec-down``) back into the model's named arrays, so the
   app reads ``msg.content["arrays"]`` as without compression (this needs the ``template``);
2. lets the app train and reply with its full trained arrays (same names as received);
3. replaces them by the uplink codec's payload of ``trained - received`` (plus the
   error-feedback residual, kept in ``context.state`` across rounds when ``codec-ef``).

Steps 1 and 3 are :func:`~clients.codec_transport.received_arrays` and
:func:`~clients.codec_transport.encode_update`, the functions fl-ext's own client uses, so the
payload is the one that client would send for the same training and the server decodes it
with the codec it named. Messages without codec entries pass through untouched.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp.typing import ClientAppCallable

from clients.mods.common import (
    Template,
    error_reply,
    is_train,
    message_config,
    single_array_record,
    template_arrays,
)
from flwr_records import named_array_record


class CodecMod:
    """Decode the compressed broadcast before the app, encode its update after it.

    ``template``: the app's model (or its state dict / an ArrayRecord), needed only when the
    server also compresses the broadcast (``codec-down``): the payload holds values, the
    template gives their names, shapes and dtypes (in the server's order). Without it, such a
    message is answered with an error saying so.

    In ``ClientApp(mods=[...])`` put it after :class:`~clients.mods.info.ClientInfoMod` and
    before any mod that changes the trained arrays (:class:`~clients.mods.attack.AttackMod`),
    so that it encodes what those mods made. Flower's clipping mods (``fixedclipping_mod``)
    compare the reply with the received arrays, so they go after it too.
    """

    def __init__(self, template: Template | None = None) -> None:
        self.template = None if template is None else template_arrays(template)

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        config = message_config(msg)
        if not is_train(msg) or not ("codec-up" in config or "codec-down" in config):
            return call_next(msg, context)
        received = self._decode_broadcast(msg, config)
        if isinstance(received, Message):
            return received
        reply = call_next(msg, context)
        if reply.has_error() or "codec-up" not in config:
            return reply
        return self._encode_reply(msg, reply, received, config, context)

    def _decode_broadcast(
        self, msg: Message, config: dict[str, Any]
    ) -> OrderedDict[str, np.ndarray] | Message:
        """The model received (named, in the server's order), decoded into ``msg`` if coded.

        An error reply instead when the message cannot be decoded.
        """
        # imported here, as in clients.adapter: the codecs' numba kernels cost 0.26 s
        from clients.codec_transport import received_arrays

        found = single_array_record(msg)
        if found is None:
            return error_reply(msg, "CodecMod: a train message needs exactly one ArrayRecord")
        key, record = found
        if "codec-down" not in config:
            return OrderedDict(zip(record.keys(), record.to_numpy_ndarrays(), strict=True))
        if self.template is None:
            return error_reply(
                msg,
                "CodecMod: the server compresses the broadcast (codec-down); build the mod "
                "with the model: CodecMod(template=model)",
            )
        arrays = received_arrays(record, config, list(self.template.values()))
        received = OrderedDict(zip(self.template, arrays, strict=True))
        msg.content[key] = named_array_record(received)
        return received

    @staticmethod
    def _encode_reply(
        msg: Message,
        reply: Message,
        received: OrderedDict[str, np.ndarray],
        config: dict[str, Any],
        context: Context,
    ) -> Message:
        """The reply with its trained arrays replaced by the codec's payload of the update."""
        from clients.codec_transport import encode_update

        names = list(received)
        out = single_array_record(reply)
        if out is None:
            return error_reply(msg, "CodecMod: a train reply needs exactly one ArrayRecord")
        out_key, trained = out
        if sorted(trained.keys()) != sorted(names):
            return error_reply(
                msg,
                f"CodecMod: the reply's arrays {list(trained.keys())} are not the ones "
                f"received {names}: reply with the full trained model under the same names",
            )
        trained_arrays = [trained[name].numpy() for name in names]  # in the server's order
        reply.content[out_key] = encode_update(
            list(received.values()), trained_arrays, config, context
        )
        return reply
