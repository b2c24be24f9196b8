"""Flower record formats shared by the server (strategies/) and the clients (clients/).

Named numpy arrays <-> Flower ArrayRecord, keeping names and order, and a codec payload as one
byte-frame array. This package sits below both sides so that clients/ never imports
strategies/ (the import-layer contract in pyproject.toml).
"""

from __future__ import annotations

import math
import re
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
    return OrderedDict((name, array_to_numpy(array)) for name, array in record.items())


# The header ``np.save`` writes for a plain C-order array (format versions 1-3).
_NPY_HEADER = re.compile(
    rb"\{'descr': '([<>|=]?[biufc]\d{1,2})', 'fortran_order': False, 'shape': \(([\d, ]*)\), \} *\n"
)


def array_to_numpy(array: Array) -> np.ndarray:
    """``Array.numpy()``, without ``np.load``'s ``ast.literal_eval`` of the header.

    A reply's arrays are parsed every round; for a plain numeric C-order array the header is
    matched exactly and the data copied out (a fresh, writable array, as ``np.load`` gives).
    Anything else (another layout, dtype or stype, a length that does not match the header)
    goes through ``Array.numpy()``, which raises for what cannot be read.
    """
    data = array.data
    if array.stype == "numpy.ndarray" and data[:6] == b"\x93NUMPY" and len(data) > 10:
        major = data[6]
        start = 10 if major == 1 else 12
        size = int.from_bytes(data[8:start], "little")
        match = _NPY_HEADER.fullmatch(data, start, start + size)
        if match is not None:
            dtype = np.dtype(match.group(1).decode())
            shape = tuple(int(d) for d in match.group(2).replace(b" ", b"").split(b",") if d)
            count = math.prod(shape)  # Python ints: a hostile header cannot overflow it
            if len(data) == start + size + count * dtype.itemsize:
                flat = np.frombuffer(data, dtype=dtype, count=count, offset=start + size)
                return flat.reshape(shape).copy()
    return array.numpy()


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
