"""Bit-contiguous packing of b-bit masked words (b in [1, 32]) for the SecAgg upload.

A masked value is uniform in Z_{2^b}, so nothing compresses it: sending exactly b bits per
coordinate (instead of a 64-bit word) is the whole saving. Values are packed little-endian,
value i occupying bits [i*b, (i+1)*b) of the stream, with a 64-bit accumulator in one pass.
Blocks of 8 * 4096 values start on byte boundaries, so blocks pack in parallel.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange
from numpy.typing import DTypeLike

_GROUP = 8 * 4096  # values per parallel block; 8 values of b bits are exactly b bytes
_WORDS = (np.dtype(np.uint16), np.dtype(np.uint32))


@numba.njit(cache=True, parallel=True)
def _pack_kernel(values: np.ndarray, bits: int, out: np.ndarray) -> bool:
    """Pack ``values`` into ``out``; False if some value has bits at or above ``bits``."""
    n = values.shape[0]
    nblocks = (n + _GROUP - 1) // _GROUP
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    over = np.zeros(nblocks, dtype=np.uint64)
    for b in prange(nblocks):
        start = b * _GROUP
        stop = min(start + _GROUP, n)
        pos = (start // 8) * bits
        acc = np.uint64(0)
        nbits = 0
        high = np.uint64(0)
        for i in range(start, stop):
            v = np.uint64(values[i])
            high |= v & ~mask
            acc |= v << np.uint64(nbits)
            nbits += bits
            while nbits >= 8:
                out[pos] = np.uint8(acc & np.uint64(0xFF))
                acc >>= np.uint64(8)
                nbits -= 8
                pos += 1
        if nbits > 0:
            out[pos] = np.uint8(acc & np.uint64(0xFF))
        over[b] = high
    for b in range(nblocks):
        if over[b] != 0:
            return False
    return True


@numba.njit(cache=True, parallel=True)
def _unpack_kernel(packed: np.ndarray, bits: int, n: int, out: np.ndarray) -> bool:
    """Unpack ``n`` values into ``out``; False if the trailing padding bits are not zero."""
    nblocks = (n + _GROUP - 1) // _GROUP
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    rest = np.zeros(nblocks, dtype=np.uint64)
    for b in prange(nblocks):
        start = b * _GROUP
        stop = min(start + _GROUP, n)
        pos = (start // 8) * bits
        acc = np.uint64(0)
        nbits = 0
        for i in range(start, stop):
            while nbits < bits:
                acc |= np.uint64(packed[pos]) << np.uint64(nbits)
                pos += 1
                nbits += 8
            out[i] = acc & mask
            acc >>= np.uint64(bits)
            nbits -= bits
        rest[b] = acc  # only the last block can hold padding bits; they must be zero
    for b in range(nblocks):
        if rest[b] != 0:
            return False
    return True


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits!r}")
    return int(bits)


def packed_size(size: int, bits: int) -> int:
    """Bytes that ``size`` values of ``bits`` bits occupy: ceil(size * bits / 8)."""
    bits = _check_bits(bits)
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 0:
        raise ValueError(f"size must be an int >= 0, got {size!r}")
    return (int(size) * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> np.ndarray:
    """``values`` (1-D uint16/uint32, each < 2^bits) as ceil(size * bits / 8) uint8 bytes."""
    bits = _check_bits(bits)
    if not isinstance(values, np.ndarray) or values.ndim != 1 or values.dtype not in _WORDS:
        desc = (
            f"{values.dtype} shape {values.shape}"
            if isinstance(values, np.ndarray)
            else type(values).__name__
        )
        raise ValueError(f"values must be a 1-D uint16 or uint32 array, got {desc}")
    out = np.zeros(packed_size(values.size, bits), dtype=np.uint8)
    if values.size and not _pack_kernel(np.ascontiguousarray(values), bits, out):
        raise ValueError(f"values must be < 2**{bits} (the caller masks them), got larger ones")
    return out


def unpack(packed: np.ndarray, bits: int, size: int, dtype: DTypeLike) -> np.ndarray:
    """Inverse of :func:`pack`; ValueError on a wrong length or nonzero padding (hostile input)."""
    bits = _check_bits(bits)
    dt = np.dtype(dtype)
    if dt not in _WORDS or bits > 8 * dt.itemsize:
        raise ValueError(f"dtype must be uint16 or uint32 wide enough for {bits} bits, got {dt}")
    want = packed_size(size, bits)
    if not isinstance(packed, np.ndarray) or packed.ndim != 1 or packed.dtype != np.uint8:
        desc = (
            f"{packed.dtype} shape {packed.shape}"
            if isinstance(packed, np.ndarray)
            else type(packed).__name__
        )
        raise ValueError(f"packed must be a 1-D uint8 array of {want} bytes, got {desc}")
    if packed.size != want:
        raise ValueError(
            f"packed must hold {want} bytes for {size} values of {bits} bits, got {packed.size}"
        )
    out = np.empty(int(size), dtype=dt)
    if size and not _unpack_kernel(np.ascontiguousarray(packed), bits, int(size), out):
        raise ValueError("packed payload has nonzero padding bits after the last value")
    return out
