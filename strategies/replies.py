"""Turn a reply Message into checked numpy data, or a Rejection saying why not.

This is the only place the strategies look inside client replies; the checks themselves are
the framework-free ones in :mod:`fl_ext.validation`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from fl_ext.params import ParamSpec
from fl_ext.validation import (
    Rejection,
    RejectReason,
    check_arrays,
    check_example_count,
    check_metrics,
)
from strategies.records import record_to_named

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


def parse_train_reply(
    msg: Message,
    expected: ParamSpec,
    *,
    max_examples: int | None,
    required_metrics: tuple[str, ...],
) -> TrainReply | Rejection:
    """Exactly one ArrayRecord matching ``expected`` and one MetricRecord with a valid count."""
    content = msg.content
    if len(content.array_records) != 1:
        return Rejection(
            RejectReason.MALFORMED, f"expected 1 ArrayRecord, got {len(content.array_records)}"
        )
    metrics = _single_metrics(msg)
    if isinstance(metrics, Rejection):
        return metrics
    rejection = check_example_count(metrics.get(NUM_EXAMPLES), max_examples) or check_metrics(
        {k: v for k, v in metrics.items() if k != NUM_EXAMPLES}, required_metrics
    )
    if rejection:
        return rejection
    record = next(iter(content.array_records.values()))
    try:
        arrays = record_to_named(record)
    except Exception as err:  # noqa: BLE001  (any decoding failure is the client's fault)
        return Rejection(RejectReason.MALFORMED, f"arrays cannot be decoded: {err}")
    rejection = check_arrays(arrays, expected)
    if rejection:
        return rejection
    num_examples = int(metrics.pop(NUM_EXAMPLES))
    return TrainReply(msg.metadata.src_node_id, arrays, num_examples, metrics)


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
