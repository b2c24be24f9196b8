"""Flower record formats shared by the server (strategies/) and the clients (clients/).

Named numpy arrays <-> Flower ArrayRecord, keeping names and order, and a codec payload as one
byte-frame array. This package sits below both sides so that clients/ never imports
strategies/ (the import-layer contract in pyproject.toml).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fl_ext.codecs.base import PayloadError
from fl_ext.codecs.frame import pack, unpack


def named_array_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord with the given names, in order."""
    return ArrayRecord(OrderedDict((name, Array(np.asarray(a))) for name, a in arrays.items()))


def record_to_named(record: ArrayRecord) -> OrderedDict[str, np.ndarray]:
    """The record's arrays as named numpy arrays, in order."""
    return OrderedDict((name, array.numpy()) for name, array in record.items())


PAYLOAD_KEY = "payload"
PAYLOAD_STYPE = "fl-ext.payload/1"


def payload_record(payload: Mapping[str, np.ndarray]) -> ArrayRecord:
    """A codec payload as an ArrayRecord holding one byte frame (see fl_ext.codecs.frame)."""
    frame = pack(dict(payload))
    array = Array(dtype="uint8", shape=(len(frame),), stype=PAYLOAD_STYPE, data=frame)
    return ArrayRecord(OrderedDict([(PAYLOAD_KEY, array)]))


def record_payload(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`payload_record`; PayloadError for anything else."""
    if list(record.keys()) != [PAYLOAD_KEY]:
        raise PayloadError(f"expected one array {PAYLOAD_KEY!r}, got {list(record.keys())}")
    array = record[PAYLOAD_KEY]
    if array.stype != PAYLOAD_STYPE or array.dtype != "uint8":
        raise PayloadError(f"payload array has stype {array.stype!r}, dtype {array.dtype!r}")
    return unpack(array.data)
