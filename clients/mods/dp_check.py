"""``DpSgdMod``: a DP-SGD round's reply leaves only with the privacy spend the ledger needs.

With ``SampleLevelDP`` the server sends ``dp-mode = dp_sgd`` and the DP-SGD parameters in the
train config, and records every client's spend in its privacy ledger from the reply metrics
``dp-client``, ``dp-noise-multiplier``, ``dp-sample-rate``, ``dp-steps`` (and compares the
client's ``dp-epsilon`` claim). A mod cannot make the app's own training loop private; the
app trains with :class:`clients.mods.dp_sgd.DpSgdTraining` (Opacus, fl-ext's accounting),
whose ``finish()`` records this round's spend in ``context.state``. This mod, around the app:

- adds that spend to the reply's MetricRecord (or checks it, if the app reported it too);
- refuses to send the update of a DP-SGD round that did not train through the helper (no
  spend recorded for this message): error code :data:`~fl_ext.refusals.INCOMPATIBLE`, so the
  server stops asking the node -- an update trained without DP-SGD never leaves the client;
- turns :class:`~fl_ext.refusals.BudgetExhausted` (the helper raises it when the round would
  take the client past ``dp-target-epsilon``) into the decline fl-ext's own client sends
  (error code :data:`~fl_ext.refusals.DECLINED`).

It checks what the helper recorded, not the loop itself: an app that trains with other
objects than the ones ``make_private`` returned is not private, whatever the metrics say.
Needs no Opacus.
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable

from clients.mods.common import error_reply, is_train, message_config
from fl_ext.refusals import DECLINED, INCOMPATIBLE, BudgetExhausted

DP_SGD = "dp_sgd"  # the train config's dp-mode for sample-level DP
ROUND_KEY = "dp-sgd-round"  # context.state: the spend DpSgdTraining.finish recorded
MESSAGE_ID = "message-id"
SPEND_KEYS = ("dp-client", "dp-noise-multiplier", "dp-sample-rate", "dp-steps", "dp-epsilon")


def is_dp_sgd(msg: Message) -> bool:
    """A train message of a sample-level DP round."""
    return is_train(msg) and message_config(msg).get("dp-mode") == DP_SGD


class DpSgdMod:
    """Adds the helper's DP-SGD spend to the reply; refuses a DP round trained without it."""

    def __call__(self, msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        if not is_dp_sgd(msg):
            return call_next(msg, context)
        if ROUND_KEY in context.state:  # a spend of an earlier message is not this one's
            del context.state[ROUND_KEY]
        try:
            reply = call_next(msg, context)
        except BudgetExhausted as err:
            return Message(Error(code=DECLINED, reason=str(err)), reply_to=msg)
        spend = context.state.get(ROUND_KEY)
        if ROUND_KEY in context.state:
            del context.state[ROUND_KEY]
        if reply.has_error():
            return reply
        if not isinstance(spend, ConfigRecord) or spend.get(MESSAGE_ID) != msg.metadata.message_id:
            return error_reply(
                msg,
                "DpSgdMod: this is a DP-SGD round (dp-mode=dp_sgd) but the app did not train "
                "with clients.mods.DpSgdTraining (make_private, then finish); the update is "
                "not sent",
                code=INCOMPATIBLE,
            )
        return _with_spend(msg, reply, spend)


def _with_spend(msg: Message, reply: Message, spend: ConfigRecord) -> Message:
    """The reply with the recorded spend in its MetricRecord, or an error if it disagrees."""
    metrics = list(reply.content.metric_records.values())
    if len(metrics) != 1 or not isinstance(metrics[0], MetricRecord):
        return error_reply(msg, f"DpSgdMod: expected one MetricRecord, got {len(metrics)}")
    record = metrics[0]
    for key in SPEND_KEYS:
        value = spend[key]
        if key in record and record[key] != value:
            return error_reply(
                msg, f"DpSgdMod: the reply reports {key}={record[key]!r}, DP-SGD spent {value!r}"
            )
        assert isinstance(value, int | float)
        record[key] = value
    return reply
