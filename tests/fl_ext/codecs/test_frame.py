"""The payload byte frame: round trip and hostile frames."""

import struct

import numpy as np
import pytest

from fl_ext.codecs import PayloadError
from fl_ext.codecs.frame import pack, unpack

PAYLOAD = {
    "indices": np.arange(10, dtype=np.uint8),
    "meta": np.array([3, 7], dtype=np.int64),
    "values.q": np.array([-1, 2, 127], dtype=np.int8),
    "scales": np.array([[0.5, 1.5]], dtype=np.float32),
    "half": np.array([1.0], dtype=np.float16),
}


def test_round_trip_keeps_names_dtypes_shapes_and_values():
    back = unpack(pack(PAYLOAD))
    assert list(back) == list(PAYLOAD)
    for k, v in PAYLOAD.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and np.array_equal(back[k], v)
        assert back[k].flags.writeable


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: b"XXXX" + f[4:], "magic"),
        (lambda f: f[:-1], "too short"),
        (lambda f: f + b"\0", "after its last field"),
        (lambda f: f[:4] + struct.pack("<B", 200) + f[5:], "claims 200 fields"),
        (lambda f: f[:12], "malformed|too short"),
        (lambda f: f[:5] + f[5:6] + b"\xff" * f[5] + f[6 + f[5] :], "malformed"),
    ],
)
def test_bad_frames_are_payload_errors(mutate, match):
    with pytest.raises(PayloadError, match=match):
        unpack(mutate(pack(PAYLOAD)))


def test_unknown_dtype_code_and_repeated_names():
    frame = bytearray(pack({"a": np.zeros(2, np.uint8)}))
    frame[5 + 1 + 1] = 99  # dtype code of field "a"
    with pytest.raises(PayloadError, match="unknown dtype code 99"):
        unpack(bytes(frame))
    one = pack({"a": np.zeros(1, np.uint8)})
    header = one[5 : 5 + 1 + 1 + 2 + 4]
    twice = one[:4] + struct.pack("<B", 2) + header + header + b"\0\0"
    with pytest.raises(PayloadError, match="repeats a field name"):
        unpack(twice)


def test_unframeable_payloads_are_refused_on_the_sending_side():
    with pytest.raises(ValueError, match="cannot be framed"):
        pack({"x": np.zeros(2, np.complex64)})
