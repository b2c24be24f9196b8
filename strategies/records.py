"""Named numpy arrays <-> Flower ArrayRecord, keeping names and order."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord


def named_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord with the given names, in order."""
    return ArrayRecord(OrderedDict((name, Array(np.asarray(a))) for name, a in arrays.items()))


def record_to_named(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """The record's arrays as named numpy arrays, in order."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


def payload_record(payload: Mapping[str, np.ndarray]) -> ArrayRecord:
    """A codec payload (named numpy arrays of any dtype) as an ArrayRecord."""
    return ArrayRecord(OrderedDict((k, Array(np.ascontiguousarray(v))) for k, v in payload.items()))


def record_payload(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`payload_record`."""
    return {k: v.numpy() for k, v in record.items()}
