"""Secure aggregation on the client: the SecAgg+ query phases and the masked train reply.

fl-ext's server under secure aggregation (:mod:`strategies.secure_rounds`) sends three
``query.secagg_<phase>`` messages and a ``train`` message per round. A ClientApp serves them
with :func:`add_secagg` (registers the query handlers; fl-ext's own app does) and
:class:`SecAggMod` around its train function::

    app = ClientApp(mods=[ClientInfoMod(model), SecAggMod()])
    add_secagg(app)

The mod lets the app train and reply with its full trained arrays, then replaces them by the
masked, bit-packed encoding of ``trained - received`` (clipped, quantized, weighted by the
capped example count, masked; see :mod:`fl_ext.secagg`). The reply's ``num-examples`` is
removed: the weight travels only inside the masked vector. The round's secrets live in
``context.state`` between messages and are replaced at every round's key phase.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable

from clients.mods.common import error_reply, is_train, message_config, single_array_record
from fl_ext.privacy.skellam import sample_skellam
from fl_ext.refusals import DROPPED
from fl_ext.secagg.client import ClientSession
from fl_ext.secagg.encoding import SecAggEncoding
from fl_ext.secagg.keys import SecAggError
from fl_ext.secagg.packing import pack
from fl_ext.secagg.server import SEALED_BYTES
from fl_ext.secagg.wire import SHARE, RoundParams, pack_table, unpack_ids, unpack_keys, unpack_table
from flwr_records import named_array_record

STATE_KEY = "secagg"
REPLY_KEY = "secagg"
MASKED_KEY = "masked"
PARAMS_KEY = "secagg-params"
DROPOUT_KEY = "simulate-dropout"
PHASES = ("keys", "shares", "train", "unmask")


def _params(config: dict[str, object]) -> RoundParams:
    raw = config.get(PARAMS_KEY)
    if not isinstance(raw, bytes):
        raise SecAggError(f"message carries no '{PARAMS_KEY}'")
    return RoundParams.from_bytes(raw)


def _session(context: Context, params: RoundParams) -> ClientSession:
    if STATE_KEY not in context.state:
        raise SecAggError("no secure-aggregation session: this node missed the key phase")
    session = ClientSession.from_state(dict(context.state[STATE_KEY]))
    if session.params != params:
        raise SecAggError("message belongs to another secure-aggregation round (replayed?)")
    return session


def _store(context: Context, session: ClientSession) -> None:
    values: dict[str, Any] = dict(session.to_state())
    context.state[STATE_KEY] = ConfigRecord(values)


def _dropped(msg: Message, config: dict[str, object], phase: str) -> Message | None:
    """Simulation: the node stops answering from ``phase`` on (an error reply, as a crash)."""
    if config.get(DROPOUT_KEY) in PHASES[: PHASES.index(phase) + 1]:  # from that phase on
        return Message(Error(DROPPED, f"simulated dropout in the {phase} phase"), reply_to=msg)
    return None


def secagg_query(msg: Message, context: Context) -> Message:
    """Answer ``query.secagg_keys`` / ``_shares`` / ``_unmask``; a violation is an error reply."""
    config = message_config(msg)
    phase = msg.metadata.message_type.split(".", 1)[-1].removeprefix("secagg_")
    dropped = _dropped(msg, config, phase)
    if dropped is not None:
        return dropped
    answer = _ANSWERS.get(phase)
    if answer is None:
        return error_reply(msg, f"unknown secure-aggregation phase {phase!r}")
    try:
        params = _params(config)
        if phase == "keys":
            session = ClientSession.start(int(msg.metadata.dst_node_id), params)
        else:
            session = _session(context, params)
        out = answer(session, config)
    except SecAggError as err:
        return error_reply(msg, f"secure aggregation ({phase}): {err}")
    _store(context, session)
    values: dict[str, Any] = dict(out)
    return Message(RecordDict({REPLY_KEY: ConfigRecord(values)}), reply_to=msg)


def _keys(session: ClientSession, config: dict[str, object]) -> dict[str, bytes]:
    enc, mask = session.advertise()
    return {"enc-pk": enc, "mask-pk": mask}


def _shares(session: ClientSession, config: dict[str, object]) -> dict[str, bytes]:
    sealed, commit = session.share(unpack_keys(_field(config, "secagg-neighbours")))
    return {"sealed": pack_table(sealed, SEALED_BYTES), "commitment": commit}


def _unmask(session: ClientSession, config: dict[str, object]) -> dict[str, bytes]:
    seeds, sks = session.unmask(
        unpack_ids(_field(config, "secagg-survivors")),
        unpack_ids(_field(config, "secagg-dropped")),
    )
    return {"seeds": pack_table(seeds, SHARE), "sks": pack_table(sks, SHARE)}


_ANSWERS: dict[str, Callable[[ClientSession, dict[str, object]], dict[str, bytes]]] = {
    "keys": _keys,
    "shares": _shares,
    "unmask": _unmask,
}


def _field(config: dict[str, object], key: str) -> bytes:
    value = config.get(key)
    if not isinstance(value, bytes):
        raise SecAggError(f"message carries no bytes entry '{key}'")
    return value


def _flat(record: ArrayRecord, names: list[str]) -> np.ndarray:
    return np.concatenate(
        [np.asarray(record[n].numpy(), dtype=np.float32).reshape(-1) for n in names]
    )


class SecAggMod:
    """Mask the app's train reply when the server runs secure aggregation (see module doc)."""

    def __call__(  # noqa: PLR0911  (one refusal per precondition)
        self, msg: Message, context: Context, call_next: ClientAppCallable
    ) -> Message:
        config = message_config(msg)
        if not is_train(msg) or PARAMS_KEY not in config:
            return call_next(msg, context)
        dropped = _dropped(msg, config, "train")
        if dropped is not None:
            return dropped
        found = single_array_record(msg)
        if found is None:
            return error_reply(msg, "SecAggMod: a train message needs exactly one ArrayRecord")
        names = list(found[1].keys())
        received = _flat(found[1], names)
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        out = single_array_record(reply)
        if out is None or sorted(out[1].keys()) != sorted(names):
            return error_reply(msg, "SecAggMod: reply with the full trained model, same names")
        try:
            masked, bits = _masked_update(_flat(out[1], names) - received, reply, config, context)
        except (SecAggError, ValueError) as err:
            return error_reply(msg, f"secure aggregation (train): {err}")
        reply.content[out[0]] = named_array_record({MASKED_KEY: pack(masked, bits)})
        return reply


def _masked_update(
    update: np.ndarray, reply: Message, config: dict[str, object], context: Context
) -> tuple[np.ndarray, int]:
    """Encode and mask ``update``; the reply's example count moves into the vector."""
    params = _params(config)
    session = _session(context, params)
    encoding = SecAggEncoding.from_config(config)
    sealed = unpack_table(_field(config, "secagg-sealed"), SEALED_BYTES)
    if encoding.size != update.shape[0] or params.size != encoding.size + 1:
        raise SecAggError(
            f"the model has {update.shape[0]} parameters, the round encodes {encoding.size}"
        )
    metrics = dict(reply.content.metric_records.get("metrics", MetricRecord()))
    count = metrics.pop("num-examples", 1)
    per = config.get("secagg-examples-per-weight", 1)
    examples = int(count) if isinstance(count, int | float) else 1
    weight = encoding.weight_of(examples, per if isinstance(per, int) else 1)
    noise = None
    clip = config.get("secagg-dp-l2-clip")
    if clip is not None:  # DP: clip in L2 (and, distributed, add our share of the noise)
        if not (isinstance(clip, float) and clip > 0):
            raise SecAggError(f"secagg-dp-l2-clip must be a float > 0, got {clip!r}")
        norm = float(np.linalg.norm(update.astype(np.float64)))
        if norm > clip:
            update = update * np.float32(clip / norm)
    mu = config.get("secagg-dp-mu")
    if isinstance(mu, float) and mu > 0:
        noise = sample_skellam(mu, encoding.size, np.random.default_rng(secrets.randbits(128)))
    words = encoding.encode(update, weight=weight, seed=secrets.randbits(64), noise=noise)
    masked = session.masked(words, sealed)
    _store(context, session)
    reply.content["metrics"] = MetricRecord(metrics)
    return masked, params.bits


def add_secagg(app: ClientApp) -> ClientApp:
    """Register the secure-aggregation query handlers on ``app`` (and return it)."""
    for phase in ("keys", "shares", "unmask"):
        app.query(f"secagg_{phase}")(_handler())
    return app


def _handler() -> Callable[[Message, Context], Message]:
    def handle(msg: Message, context: Context) -> Message:
        return secagg_query(msg, context)

    return handle
