"""Serve any ``NumPyClient`` to a Message-API ``ClientApp``: the one place that converts.

Train: ArrayRecord -> list of ndarrays -> ``fit`` -> ArrayRecord (same array names, in
order) + MetricRecord with ``num-examples``. Evaluate: ``evaluate`` -> MetricRecord with
``loss``, ``num-examples`` and the client's metrics. A client exception becomes Flower's
error reply, which the strategy counts as a failed client; a client whose privacy budget is
spent declines with error code :data:`DECLINED` and the reason. Every reply carries the
client's fl-ext version and model-schema hash (``client-info``); a client refuses a server
of an incompatible version or model schema with error code :data:`INCOMPATIBLE`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.common import Scalar
from torch import nn

from fl_ext import __version__
from fl_ext.compat import (
    CLIENT_INFO,
    DATA_HASH_KEY,
    DATA_SIZE_KEY,
    EVALUATE_RECEIVED,
    INCOMPATIBLE,
    MAX_WIDTH_KEY,
    SCHEMA_KEY,
    VERSION_KEY,
    incompatibility,
    schema_hash,
    schema_mismatch,
)
from fl_ext.params import get_weights
from fl_ext.refusals import DECLINED, DROPPED, BudgetExhausted
from flwr_records import named_array_record

ClientFn = Callable[[Context, dict[str, Any]], NumPyClient]

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"


def _arrays(msg: Message) -> ArrayRecord:
    return msg.content.array_records[ARRAYS_KEY]


def _config(msg: Message) -> dict[str, Scalar]:
    """The message's ConfigRecord as a NumPyClient config; a list value is a TypeError."""
    records = msg.content.config_records
    config: dict[str, Scalar] = {}
    for key, value in (records[CONFIG_KEY] if CONFIG_KEY in records else {}).items():
        if isinstance(value, list):  # as Flower's NumPyClient conversion: no lists in a Config
            raise TypeError(f"config entry {key!r} is a list; a NumPyClient config holds scalars")
        config[key] = value
    return config


def _metrics(metrics: Mapping[str, Scalar]) -> dict[str, int | float]:
    """A client's metrics as MetricRecord values; a non-numeric one is a TypeError naming it."""
    numeric: dict[str, int | float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {key!r} is a {type(value).__name__}, expected int or float")
        numeric[key] = value
    return numeric


def _inputs(msg: Message) -> tuple[list[str], list[Any], dict[str, Scalar]]:
    record = _arrays(msg)
    return list(record.keys()), record.to_numpy_ndarrays(), _config(msg)


def client_schema(client: NumPyClient) -> str:
    """Schema hash of the client's model (``model`` attribute), "" if it exposes none."""
    model = getattr(client, "model", None)
    return schema_hash(get_weights(model)) if isinstance(model, nn.Module) else ""


def client_info(schema: str, client: NumPyClient | None = None) -> ConfigRecord:
    """What every reply says about the client: its fl-ext version and model schema.

    A client with a ``data_hash`` attribute (an fl-ext client) adds its data version: the
    SHA-256 of its examples and their count, never the data itself.
    """
    info: dict[str, Any] = {VERSION_KEY: __version__, SCHEMA_KEY: schema}
    data_hash = getattr(client, "data_hash", "")
    if isinstance(data_hash, str) and data_hash:
        info[DATA_HASH_KEY] = data_hash
        info[DATA_SIZE_KEY] = len(client.train) + len(client.test)  # type: ignore[union-attr]
    max_width = getattr(client, "max_width", None)
    if isinstance(max_width, float):
        info[MAX_WIDTH_KEY] = max_width
    return ConfigRecord(info)


def refusal(msg: Message, config: dict[str, Any], schema: str) -> Message | None:
    """An INCOMPATIBLE error reply if the server's version or model schema cannot work here."""
    reason = None
    if VERSION_KEY in config:
        reason = incompatibility(__version__, str(config[VERSION_KEY]), remote_name="server")
    if reason is None and SCHEMA_KEY in config:
        reason = schema_mismatch(str(config[SCHEMA_KEY]), schema)
    if reason is None:
        return None
    return Message(Error(code=INCOMPATIBLE, reason=f"client refuses: {reason}"), reply_to=msg)


def train_reply(msg: Message, context: Context, client_fn: ClientFn) -> Message:
    """Run ``fit`` and wrap its result as the reply to ``msg``.

    With ``codec-up`` in the config the reply carries the encoded update (trained minus
    received) instead of the full arrays. With ``evaluate-received`` the client first
    evaluates the model it received on its local test split and adds ``eval-loss``,
    ``eval-accuracy`` and ``eval-num-examples`` to the reply (one exchange per round).
    """
    config = _config(msg)
    if config.get("simulate-dropout") == "train":  # simulation: this client vanishes now
        return Message(
            Error(code=DROPPED, reason="simulated dropout in the train phase"), reply_to=msg
        )
    record = _arrays(msg)
    client = client_fn(context, config)
    schema = client_schema(client)
    refused = refusal(msg, config, schema)
    if refused is not None:
        return refused
    coded = "codec-up" in config
    if coded:  # imported here: the codecs' numba kernels cost an uncompressed client 0.26 s
        from clients.codec_transport import encode_update, received_arrays

        arrays = received_arrays(record, config, client.get_parameters({}))
    else:
        names, arrays = list(record.keys()), record.to_numpy_ndarrays()
    evaluated: dict[str, Any] = {}
    if config.get(EVALUATE_RECEIVED):
        loss, count, scores = client.evaluate(arrays, config)
        evaluated = {
            "eval-loss": float(loss),
            "eval-accuracy": float(scores.get("accuracy", float("nan"))),
            "eval-num-examples": int(count),
        }
    try:
        new_arrays, num_examples, metrics = client.fit(arrays, config)
    except BudgetExhausted as err:
        return Message(Error(code=DECLINED, reason=str(err)), reply_to=msg)
    if len(new_arrays) != len(arrays):
        raise ValueError(f"fit returned {len(new_arrays)} arrays, expected {len(arrays)}")
    if coded:
        out = encode_update(arrays, new_arrays, config, context)
    else:
        out = named_array_record(OrderedDict(zip(names, new_arrays, strict=True)))
    content = RecordDict(
        {
            ARRAYS_KEY: out,
            METRICS_KEY: MetricRecord(
                {**_metrics(metrics), **evaluated, "num-examples": int(num_examples)}
            ),
            CLIENT_INFO: client_info(schema, client),
        }
    )
    return Message(content=content, reply_to=msg)


def evaluate_reply(msg: Message, context: Context, client_fn: ClientFn) -> Message:
    """Run ``evaluate`` and wrap its result as the reply to ``msg``."""
    _, arrays, config = _inputs(msg)
    client = client_fn(context, config)
    schema = client_schema(client)
    refused = refusal(msg, config, schema)
    if refused is not None:
        return refused
    loss, num_examples, metrics = client.evaluate(arrays, config)
    content = RecordDict(
        {
            METRICS_KEY: MetricRecord(
                {**_metrics(metrics), "loss": float(loss), "num-examples": int(num_examples)}
            ),
            CLIENT_INFO: client_info(schema, client),
        }
    )
    return Message(content=content, reply_to=msg)


def numpy_client_app(client_fn: ClientFn) -> ClientApp:
    """A ClientApp answering ``train`` and ``evaluate`` messages with ``client_fn``'s client.

    It also serves secure aggregation (the ``query.secagg_*`` phases and the masked reply) and
    holds train replies by the node config's ``train-delay-s`` (a slower device on purpose).
    """
    from clients.mods.secagg import SecAggMod, add_secagg  # the mods import this module
    from clients.mods.slow_device import slow_device_mod

    app = add_secagg(ClientApp(mods=[slow_device_mod, SecAggMod()]))

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context, client_fn)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate_reply(msg, context, client_fn)

    return app
