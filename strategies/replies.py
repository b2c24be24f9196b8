"""Turn a reply Message into checked numpy data, or a Rejection saying why not.

This is the only place the strategies look inside client replies; the checks themselves are
the framework-free ones in :mod:`fl_ext.validation`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message

from fl_ext.codecs import Codec, PayloadError
from fl_ext.compat import (
    CLIENT_INFO,
    DATA_HASH_KEY,
    DATA_SIZE_KEY,
    SCHEMA_KEY,
    VERSION_KEY,
    incompatibility,
    schema_mismatch,
)
from fl_ext.params import ParamSpec
from fl_ext.stats import Moments
from fl_ext.validation import (
    Rejection,
    RejectReason,
    check_arrays,
    check_example_count,
    check_metrics,
)
from flwr_records import record_payload, record_to_named

NUM_EXAMPLES = "num-examples"


@dataclass(frozen=True)
class TrainReply:
    """A train reply that passed the structural checks."""

    node_id: int
    arrays: OrderedDict[str, np.ndarray]
    num_examples: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class EvaluateReply:
    """An evaluate reply that passed the checks."""

    node_id: int
    num_examples: int
    metrics: dict[str, Any]


def _single_metrics(msg: Message) -> dict[str, Any] | Rejection:
    records = msg.content.metric_records
    if len(records) != 1:
        return Rejection(RejectReason.MALFORMED, f"expected 1 MetricRecord, got {len(records)}")
    return dict(next(iter(records.values())))


UPDATE_KEY = "update"
# A loss or a compute time below zero is a lie (selection would trust it).
TRAIN_BOUNDS = {
    "train_loss": (0.0, math.inf),
    "compute_time_s": (0.0, math.inf),
    "eval-loss": (0.0, math.inf),  # evaluation of the received model (evaluate_with_train)
    "eval-accuracy": (0.0, 1.0),
    "eval-num-examples": (1.0, math.inf),
}


def _record_and_metrics(
    msg: Message, max_examples: int | None, required_metrics: tuple[str, ...]
) -> tuple[ArrayRecord, dict[str, Any]] | Rejection:
    content = msg.content
    if len(content.array_records) != 1:
        return Rejection(
            RejectReason.MALFORMED, f"expected 1 ArrayRecord, got {len(content.array_records)}"
        )
    metrics = _single_metrics(msg)
    if isinstance(metrics, Rejection):
        return metrics
    rejection = check_example_count(metrics.get(NUM_EXAMPLES), max_examples) or check_metrics(
        {k: v for k, v in metrics.items() if k != NUM_EXAMPLES}, required_metrics, TRAIN_BOUNDS
    )
    return rejection or (next(iter(content.array_records.values())), metrics)


def _decode(
    record: ArrayRecord, expected: ParamSpec, codec: Codec | None
) -> OrderedDict[str, np.ndarray] | Rejection:
    if codec is not None:
        try:
            update = codec.decode(record_payload(record), expected.size)
        except PayloadError as err:
            return Rejection(RejectReason.MALFORMED, f"bad {type(codec).__name__} payload: {err}")
        except Exception as err:  # noqa: BLE001  (a payload that breaks decoding is the client's)
            return Rejection(RejectReason.MALFORMED, f"payload cannot be decoded: {err}")
        return OrderedDict([(UPDATE_KEY, update)])
    try:
        arrays = record_to_named(record)
    except Exception as err:  # noqa: BLE001  (any decoding failure is the client's fault)
        return Rejection(RejectReason.MALFORMED, f"arrays cannot be decoded: {err}")
    return check_arrays(arrays, expected) or arrays


def parse_train_reply(
    msg: Message,
    expected: ParamSpec,
    *,
    max_examples: int | None,
    required_metrics: tuple[str, ...],
    codec: Codec | None = None,
) -> TrainReply | Rejection:
    """Exactly one ArrayRecord matching ``expected`` and one MetricRecord with a valid count.

    With ``codec``, the ArrayRecord is the codec's payload of the update: it is checked and
    decoded, and the reply's ``arrays`` hold the flat update under :data:`UPDATE_KEY`.
    """
    parts = _record_and_metrics(msg, max_examples, required_metrics)
    if isinstance(parts, Rejection):
        return parts
    record, metrics = parts
    arrays = _decode(record, expected, codec)
    if isinstance(arrays, Rejection):
        return arrays
    num_examples = int(metrics.pop(NUM_EXAMPLES))
    return TrainReply(msg.metadata.src_node_id, arrays, num_examples, metrics)


def reported_metrics(msg: Message) -> dict[str, Any]:
    """The metrics of a reply's single MetricRecord as reported (unchecked), or {}.

    For what must count even when a reply is later rejected or arrives late: a DP-SGD client's
    privacy spend, the compute time the clock models a device's speed from.
    """
    if not (msg.has_content() and "metrics" in msg.content):
        return {}
    return dict(msg.content["metrics"])


def reported_loss(reply: TrainReply) -> float | None:
    """The reply's ``train_loss`` if usable (a plain Flower client may not report one)."""
    loss = reply.metrics.get("train_loss")
    return float(loss) if isinstance(loss, int | float) and loss >= 0 else None


def check_client_info(msg: Message, server_version: str, schema: str) -> Rejection | None:
    """The reply must say which fl-ext version and model schema produced it, both compatible."""
    info = msg.content.config_records.get(CLIENT_INFO)
    if info is None:
        return Rejection(
            RejectReason.INCOMPATIBLE,
            f"reply carries no '{CLIENT_INFO}' (fl-ext version and model schema): an fl-ext "
            "client older than the version checks, or not an fl-ext client",
        )
    version, client_schema = info.get(VERSION_KEY), info.get(SCHEMA_KEY)
    if not isinstance(version, str) or not isinstance(client_schema, str):
        return Rejection(
            RejectReason.INCOMPATIBLE,
            f"'{CLIENT_INFO}' needs string {VERSION_KEY} and {SCHEMA_KEY}",
        )
    reason = incompatibility(server_version, version) or schema_mismatch(schema, client_schema)
    return Rejection(RejectReason.INCOMPATIBLE, reason) if reason else None


def parse_evaluate_reply(msg: Message, *, max_examples: int | None) -> EvaluateReply | Rejection:
    """One MetricRecord with a valid count, finite loss >= 0 and accuracy in [0, 1]."""
    metrics = _single_metrics(msg)
    if isinstance(metrics, Rejection):
        return metrics
    rejection = check_example_count(metrics.get(NUM_EXAMPLES), max_examples) or check_metrics(
        {k: v for k, v in metrics.items() if k != NUM_EXAMPLES},
        ("loss", "accuracy"),
        {"loss": (0.0, float("inf")), "accuracy": (0.0, 1.0)},
    )
    if rejection:
        return rejection
    num_examples = int(metrics.pop(NUM_EXAMPLES))
    return EvaluateReply(msg.metadata.src_node_id, num_examples, metrics)


@dataclass(frozen=True)
class StatsReply:
    """A federated-statistics reply that passed the checks (see :func:`parse_stats`)."""

    node_id: int
    moments: Moments
    num_examples: int
    partition_hash: str
    partition_size: int
    client_key: str | None  # the partition id it reports (the DP ledger's key), if any


_HEX = frozenset("0123456789abcdef")


def parse_stats(  # noqa: PLR0911  (one rejection per broken promise)
    msg: Message,
    *,
    channels: int,
    pixels: int,
    min_count: int,
    value_range: tuple[float, float],
) -> StatsReply | Rejection:
    """A ``query.fedstats`` reply as checked moments, or why it cannot be used.

    The moments must be consistent with each other and possible for ``num-examples`` images
    of ``channels`` x ``pixels`` values in ``value_range``: every count equals
    ``num-examples * pixels``, the means lie in the range, and no m2 exceeds what values in
    the range can reach (Popoviciu: ``variance <= (hi - lo)^2 / 4``).
    """
    records = msg.content.array_records
    if set(records) != {"stats"} or set(records["stats"]) != {"count", "mean", "m2"}:
        return Rejection(RejectReason.MALFORMED, "expected ArrayRecord 'stats' {count, mean, m2}")
    arrays = record_to_named(records["stats"])
    for key, kind in (("count", "i"), ("mean", "f"), ("m2", "f")):
        if arrays[key].shape != (channels,) or arrays[key].dtype.kind != kind:
            return Rejection(
                RejectReason.SHAPE_MISMATCH,
                f"{key} must be a {channels}-vector of kind {kind!r}, got "
                f"{arrays[key].dtype} {arrays[key].shape}",
            )
    metrics = _single_metrics(msg)
    if isinstance(metrics, Rejection):
        return metrics
    n = metrics.get(NUM_EXAMPLES)
    if isinstance(n, bool) or not isinstance(n, int) or n < min_count:
        return Rejection(
            RejectReason.BAD_EXAMPLE_COUNT, f"num-examples {n!r} is not an integer >= {min_count}"
        )
    try:
        moments = Moments(
            arrays["count"].astype(np.int64),
            arrays["mean"].astype(np.float64),
            arrays["m2"].astype(np.float64),
        )
    except ValueError as err:
        return Rejection(RejectReason.NON_FINITE, str(err))
    if (moments.count != n * pixels).any():
        return Rejection(
            RejectReason.BAD_EXAMPLE_COUNT,
            f"counts {moments.count.tolist()} != num-examples {n} x {pixels} values per channel",
        )
    lo, hi = value_range
    slack = 1e-9 * max(1.0, hi - lo)
    if (moments.mean < lo - slack).any() or (moments.mean > hi + slack).any():
        return Rejection(
            RejectReason.BAD_METRIC, f"means {moments.mean.tolist()} outside {value_range}"
        )
    if (moments.m2 > moments.count * (hi - lo) ** 2 / 4 * (1 + 1e-9) + slack).any():
        return Rejection(RejectReason.BAD_METRIC, "m2 larger than values in the range can give")
    data = msg.content.config_records.get("data")
    phash = str(data.get("partition-hash", "") if data is not None else "")
    size = data.get("partition-size") if data is not None else None
    if len(phash) != 64 or not set(phash) <= _HEX:
        return Rejection(RejectReason.MALFORMED, "partition-hash must be a SHA-256 hex digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < n:
        return Rejection(
            RejectReason.BAD_EXAMPLE_COUNT, f"partition-size {size!r} must be an integer >= {n}"
        )
    claimed = metrics.get("dp-client")
    ok = isinstance(claimed, int) and not isinstance(claimed, bool) and claimed >= 0
    client = str(claimed) if ok else None
    return StatsReply(msg.metadata.src_node_id, moments, n, phash, size, client)


def reported_data_version(msg: Message) -> tuple[str, int] | Rejection | None:
    """The ``(partition SHA-256, examples)`` a reply's client-info reports, None if none.

    A malformed report is a Rejection: only fl-ext clients send one, and a garbled data
    version would make the run's record of which data it learned from wrong.
    """
    info = msg.content.config_records.get(CLIENT_INFO) if msg.has_content() else None
    if info is None or DATA_HASH_KEY not in info:
        return None
    digest, size = info.get(DATA_HASH_KEY), info.get(DATA_SIZE_KEY)
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
        return Rejection(RejectReason.MALFORMED, f"{DATA_HASH_KEY} must be a SHA-256 hex digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return Rejection(RejectReason.MALFORMED, f"{DATA_SIZE_KEY} must be an integer >= 0")
    return digest, size
