"""The fast npy path gives exactly ``Array.numpy()``; anything unusual goes through it."""

import numpy as np
import pytest
from flwr.app import Array

from flwr_records import array_to_numpy

CASES = [
    np.zeros((3, 4), np.float32),
    np.arange(7, dtype=np.int64),
    np.array(3.5),
    np.ones((2, 3), order="F"),  # fortran order: the fallback
    np.zeros((0, 5), np.float16),
    np.array([1 + 2j]),
    np.array([True, False]),
    np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian
    np.array(["text"]),  # not numeric: the fallback
]


@pytest.mark.parametrize("value", CASES, ids=lambda a: f"{a.dtype}{a.shape}")
def test_same_array_as_flowers_numpy_and_writable(value):
    array = Array(value)
    got, want = array_to_numpy(array), array.numpy()
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    got[...] = got  # a fresh, writable array, as np.load gives
    assert got.flags.writeable and not np.shares_memory(got, np.frombuffer(array.data, np.uint8))


def test_a_truncated_array_is_refused_as_flower_refuses_it():
    good = Array(np.zeros(5, np.float32))
    bad = Array(dtype="float32", shape=(5,), stype="numpy.ndarray", data=bytes(good.data)[:-4])
    with pytest.raises(ValueError, match="expected 20 bytes"):
        array_to_numpy(bad)
