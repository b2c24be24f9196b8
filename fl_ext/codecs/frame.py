"""One byte frame for a whole payload: fewer records on the wire, every field checked on arrival.

A payload has several small arrays (indices, values, scales, ...). Sent as separate arrays,
each carries its own serialization header and object id (about 490 bytes each on Flower
1.41's wire), which for a top-1% update is as much as the data. The frame is
``b"FXP1" | n_fields:u8 | per field: name_len:u8 name dtype:u8 ndim:u8 dims:u32[ndim] | data``
(little-endian, data in field order). :func:`unpack` trusts nothing: magic, counts, names,
dtype codes, sizes and the exact total length are checked and a bad frame is a PayloadError.
"""

from __future__ import annotations

import struct

import numpy as np

from fl_ext.codecs.base import Payload, PayloadError

MAGIC = b"FXP1"
DTYPES = [
    np.dtype(t).newbyteorder("<")
    for t in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float16", "float32")
]
_CODES = {d: i for i, d in enumerate(DTYPES)}
MAX_FIELDS = 32
MAX_NDIM = 4


def pack(payload: Payload) -> bytes:
    """The payload's arrays as one frame (C order, little-endian)."""
    if len(payload) > MAX_FIELDS:
        raise ValueError(f"a payload has at most {MAX_FIELDS} fields, got {len(payload)}")
    head = [MAGIC, struct.pack("<B", len(payload))]
    body = []
    for name, arr in payload.items():
        raw = name.encode()
        dtype = arr.dtype.newbyteorder("<")
        if dtype not in _CODES or len(raw) > 255 or arr.ndim > MAX_NDIM:
            raise ValueError(f"field {name!r} ({arr.dtype}, ndim {arr.ndim}) cannot be framed")
        head.append(struct.pack("<B", len(raw)) + raw)
        head.append(struct.pack("<BB", _CODES[dtype], arr.ndim))
        head.append(struct.pack(f"<{arr.ndim}I", *arr.shape))
        body.append(np.ascontiguousarray(arr, dtype=dtype).tobytes())
    return b"".join(head + body)


def unpack(frame: bytes) -> Payload:
    """Inverse of :func:`pack`; PayloadError for anything malformed."""
    view = memoryview(frame)
    try:
        if bytes(view[:4]) != MAGIC:
            raise PayloadError("frame does not start with the fl-ext payload magic")
        (count,) = struct.unpack_from("<B", view, 4)
        if count > MAX_FIELDS:
            raise PayloadError(f"frame claims {count} fields (at most {MAX_FIELDS})")
        pos = 5
        fields = []
        for _ in range(count):
            (n,) = struct.unpack_from("<B", view, pos)
            name = bytes(view[pos + 1 : pos + 1 + n]).decode()
            pos += 1 + n
            code, ndim = struct.unpack_from("<BB", view, pos)
            pos += 2
            if code >= len(DTYPES) or ndim > MAX_NDIM:
                raise PayloadError(f"field {name!r}: unknown dtype code {code} or ndim {ndim}")
            shape = struct.unpack_from(f"<{ndim}I", view, pos)
            pos += 4 * ndim
            fields.append((name, DTYPES[code], shape))
    except (struct.error, UnicodeDecodeError) as err:
        raise PayloadError(f"frame header is malformed: {err}") from err
    if len({f[0] for f in fields}) != len(fields):
        raise PayloadError("frame repeats a field name")
    payload: Payload = {}
    for name, dtype, shape in fields:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if pos + nbytes > len(view):
            raise PayloadError(f"frame too short for field {name!r}")
        arr = np.frombuffer(view[pos : pos + nbytes], dtype=dtype).reshape(shape)
        payload[name] = arr.astype(dtype.newbyteorder("="), copy=True)
        pos += nbytes
    if pos != len(view):
        raise PayloadError(f"frame has {len(view) - pos} bytes after its last field")
    return payload
