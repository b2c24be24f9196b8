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
