"""``ClientInfoMod``: the fl-ext compatibility contract for a user's own ClientApp.

fl-ext's server (``FlExtFedAvg``) asks every reply for a ``client-info`` ConfigRecord (the
client's fl-ext version and model-schema hash) whenever a capability needs client code
(codecs, DP-SGD, client-side attacks) or ``require_client_info=True``; it then also needs the
``train_loss`` metric in every train reply. This mod provides the first and checks the second:

- before the app runs, a ``train``/``evaluate`` message from a server of an incompatible
  fl-ext version, or for a model of another schema, is refused with error code
  :data:`~fl_ext.refusals.INCOMPATIBLE` (as fl-ext's own client refuses, see
  :func:`clients.adapter.refusal`): the server stops asking the node;
- after it, a successful reply gets ``client-info``;
- a train reply without ``train_loss`` in its MetricRecord (the mean local training loss: the
  app must report it, this mod cannot make it up), or a dense reply to a round that asked for
  a compressed update (``codec-up``, i.e. :class:`~clients.mods.codec.CodecMod` missing or
  placed outside this mod), becomes an error reply (Flower's ``MOD_FAILED_PRECONDITION``)
  saying what is missing, instead of a reply the server would reject.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from clients.adapter import client_info, refusal
from clients.mods.common import (
    Template,
    error_reply,
    is_evaluate,
    is_train,
    message_config,
    single_array_record,
    template_arrays,
)
from fl_ext.compat import CLIENT_INFO, schema_hash
from flwr_records import PAYLOAD_KEY

TRAIN_LOSS = "train_loss"


class ClientInfoMod:
    """Adds ``client-info`` to replies; refuses another fl-ext version or model schema.

    ``template``: the app's model (``nn.Module``), its state dict or an ArrayRecord of it; the
    schema is the hash of its array names, shapes and dtypes, in order, and must equal the
    server's (``ArrayRecord(model.state_dict())`` of the same architecture).
    ``require_train_loss``: refuse to send a train reply without ``train_loss`` (default).
    Turn it off only for a server that does not need the metric (``require_client_info=False``
    and no codec, DP-SGD or client-side attack).

    Put it first in ``ClientApp(mods=[...])``, so that a refused message is never trained on
    and every other mod's reply leaves with ``client-info``.
    """

    def __init__(self, template: Template, *, require_train_loss: bool = True) -> None:
        self.schema = schema_hash(template_arrays(template))
        self.require_train_loss = bool(require_train_loss)

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        train = is_train(msg)
        if not (train or is_evaluate(msg)):
            return call_next(msg, context)
        config = message_config(msg)
        refused = refusal(msg, config, self.schema)
        if refused is not None:
            return refused
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        if train:
            problem = self._train_problem(reply, config)
            if problem is not None:
                return error_reply(msg, f"ClientInfoMod: {problem}")
        reply.content[CLIENT_INFO] = client_info(self.schema)
        return reply

    def _train_problem(self, reply: Message, config: dict[str, object]) -> str | None:
        """What fl-ext's server needs from a train reply that this one lacks, or None."""
        if self.require_train_loss:
            metrics = list(reply.content.metric_records.values())
            if len(metrics) != 1 or not isinstance(metrics[0], MetricRecord):
                return f"a train reply needs exactly one MetricRecord, it has {len(metrics)}"
            if TRAIN_LOSS not in metrics[0]:
                return (
                    f"the train reply's MetricRecord has no {TRAIN_LOSS!r}; FlExtFedAvg needs "
                    "the mean local training loss from every fl-ext client: report it as "
                    f"metrics[{TRAIN_LOSS!r}] (with 'num-examples')"
                )
        if "codec-up" in config:
            found = single_array_record(reply)
            if found is None or list(found[1].keys()) != [PAYLOAD_KEY]:
                return (
                    "the server asked for a compressed update (codec-up) but the reply is not "
                    "a codec payload: add clients.mods.CodecMod after ClientInfoMod in mods"
                )
        return None
