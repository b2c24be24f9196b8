"""The client's side of federated statistics: its moments, never its data.

A ``query.fedstats`` message asks for the per-channel count, mean and sum of squared
deviations of the client's local training examples (float64, two passes). A client with
fewer than the message's ``stats-min-count`` examples declines (its figures would say too
much about too few people). The reply also carries what identifies the client's data
version: the SHA-256 of its partition and its size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from clients.mods.common import message_config
from fl_ext.data.federated import ClientData
from fl_ext.refusals import DECLINED
from fl_ext.stats import Moments
from flwr_records import named_array_record

STATS_ACTION = "fedstats"  # message type query.fedstats
STATS_KEY = "stats"
DATA_KEY = "data"
MIN_COUNT_KEY = "stats-min-count"

DataFn = Callable[[Context, dict[str, Any]], ClientData]


def stats_reply(msg: Message, context: Context, data_fn: DataFn) -> Message:
    """Moments of this client's training examples, or a DECLINED error below the minimum."""
    config = message_config(msg)
    data = data_fn(context, config)
    minimum = config.get(MIN_COUNT_KEY, 1)
    if isinstance(minimum, bool) or not isinstance(minimum, int) or minimum < 1:
        raise ValueError(f"{MIN_COUNT_KEY} must be an integer >= 1, got {minimum!r}")
    n = len(data.train)
    if n < minimum:
        reason = f"client declines statistics: {n} examples < {MIN_COUNT_KEY}={minimum}"
        return Message(Error(code=DECLINED, reason=reason), reply_to=msg)
    moments = Moments.of(data.train.x, channel_axis=1)
    content = RecordDict(
        {
            STATS_KEY: named_array_record(
                OrderedDict(count=moments.count, mean=moments.mean, m2=moments.m2)
            ),
            "metrics": MetricRecord({"num-examples": n, **_client_key(context)}),
            DATA_KEY: ConfigRecord(
                {"partition-hash": data.partition_hash, "partition-size": data.num_examples}
            ),
        }
    )
    return Message(content=content, reply_to=msg)


def _client_key(context: Context) -> dict[str, int]:
    """The partition id (the DP ledger's key for this client's data), when the node has one."""
    pid = context.node_config.get("partition-id")
    return {"dp-client": int(pid)} if isinstance(pid, int) and not isinstance(pid, bool) else {}
