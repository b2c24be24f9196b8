"""Codec kernels against plain numpy."""

import numpy as np
import pytest

from fl_ext.codecs import kernels


@pytest.mark.parametrize("cap", [1, 64, kernels.CHUNK])
def test_select_above_matches_numpy_even_when_chunk_buffers_overflow(cap):
    x = np.random.default_rng(0).normal(size=300_001).astype(np.float32)
    idx, val = kernels.select_above(x, 1.5, cap)
    want = np.flatnonzero(np.abs(x) >= 1.5)
    assert np.array_equal(idx, want) and np.array_equal(val, x[want])


@pytest.mark.parametrize("spread", [2, 1000, 2**40])
def test_gap_packing_round_trips(spread):
    rng = np.random.default_rng(1)
    idx = np.unique(rng.integers(0, spread * 1000, size=1000)).astype(np.int64)
    packed, width = kernels.pack_gaps(idx)
    assert np.array_equal(kernels.unpack_gaps(packed, len(idx), width), idx)
    assert len(packed) == (len(idx) * width + 7) // 8


def test_float16_decode_is_exact_for_every_finite_half():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    finite = (bits & 0x7C00) != 0x7C00
    halves = bits[finite]
    out = np.empty(len(halves), dtype=np.float32)
    assert kernels.float16_to_float32(halves, out, out.view(np.uint32))
    want = halves.view(np.float16).astype(np.float32)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))
    assert not kernels.float16_to_float32(bits[~finite][:1], out[:1], out[:1].view(np.uint32))
