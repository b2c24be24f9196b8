"""numba kernels for the codecs: blockwise quantization, threshold selection, bit packing.

Parallel over blocks, one pass over the input where the job allows. Stochastic rounding draws
its uniforms from a counter-based hash (splitmix64 of seed + index), so results do not depend
on the thread count and are reproducible from the seed.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

_U53 = 1.0 / (1 << 53)


@numba.njit(cache=True, inline="always")
def _uniform(seed: np.uint64, i: int) -> float:
    z = np.uint64(seed) + np.uint64(i + 1) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * _U53


@numba.njit(cache=True, parallel=True)
def quantize_blocks(
    x: np.ndarray, block: int, levels: int, stochastic: bool, seed: np.uint64,
    q: np.ndarray, scales: np.ndarray,
) -> None:  # fmt: skip
    """Per block: scale = absmax / levels; q = round(x / scale) in [-levels, levels]."""
    d = x.shape[0]
    for b in prange(scales.shape[0]):
        start = b * block
        stop = min(start + block, d)
        m = np.float32(0.0)
        for i in range(start, stop):
            a = abs(x[i])
            m = max(m, a)
        scale = m / np.float32(levels)
        scales[b] = scale
        inv = np.float32(1.0) / scale if scale > 0 else np.float32(0.0)
        for i in range(start, stop):
            v = x[i] * inv
            if stochastic:
                r = np.floor(v + _uniform(seed, i))
            else:
                r = np.floor(v + np.float32(0.5))
            q[i] = max(-levels, min(levels, int(r)))


@numba.njit(cache=True, parallel=True)
def dequantize_blocks(q: np.ndarray, scales: np.ndarray, block: int, out: np.ndarray) -> None:
    """``out[i] = q[i] * scale of its block``."""
    d = q.shape[0]
    for b in prange(scales.shape[0]):
        s = scales[b]
        for i in range(b * block, min((b + 1) * block, d)):
            out[i] = np.float32(q[i]) * s


@numba.njit(cache=True, parallel=True)
def pack_nibbles(q: np.ndarray, out: np.ndarray) -> None:
    """Two values in [-8, 7] per byte (low nibble first)."""
    n = q.shape[0]
    for j in prange(out.shape[0]):
        lo = (q[2 * j] + 8) & 0xF
        hi = ((q[2 * j + 1] + 8) & 0xF) if 2 * j + 1 < n else 8
        out[j] = np.uint8(lo | (hi << 4))


@numba.njit(cache=True, parallel=True)
def unpack_nibbles(packed: np.ndarray, n: int, out: np.ndarray) -> None:
    """Inverse of :func:`pack_nibbles`."""
    for j in prange(packed.shape[0]):
        byte = packed[j]
        out[2 * j] = np.int8((byte & 0xF) - 8)
        if 2 * j + 1 < n:
            out[2 * j + 1] = np.int8((byte >> 4) - 8)


CHUNK = 1 << 16
_CHUNK = CHUNK


@numba.njit(cache=True, parallel=True)
def select_above(x: np.ndarray, threshold: float, cap: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ascending) and values of the entries with ``|x| >= threshold``, one pass.

    Each chunk collects into its own buffer of ``cap`` entries (a chunk that finds more is
    rescanned exactly), then the buffers are concatenated.
    """
    d = x.shape[0]
    chunks = (d + _CHUNK - 1) // _CHUNK
    cap = min(cap, _CHUNK)
    counts = np.zeros(chunks + 1, dtype=np.int64)
    local_idx = np.empty((chunks, cap), dtype=np.int64)
    local_val = np.empty((chunks, cap), dtype=np.float32)
    overflow = np.zeros(chunks, dtype=np.bool_)
    for c in prange(chunks):
        n = 0
        for i in range(c * _CHUNK, min((c + 1) * _CHUNK, d)):
            v = x[i]
            if abs(v) >= threshold:
                if n < cap:
                    local_idx[c, n] = i
                    local_val[c, n] = v
                n += 1
        counts[c + 1] = n
        overflow[c] = n > cap
    for c in range(chunks):
        counts[c + 1] += counts[c]
    idx = np.empty(counts[chunks], dtype=np.int64)
    val = np.empty(counts[chunks], dtype=np.float32)
    for c in prange(chunks):
        k = counts[c]
        if overflow[c]:
            for i in range(c * _CHUNK, min((c + 1) * _CHUNK, d)):
                if abs(x[i]) >= threshold:
                    idx[k] = i
                    val[k] = x[i]
                    k += 1
        else:
            for j in range(counts[c + 1] - counts[c]):
                idx[k + j] = local_idx[c, j]
                val[k + j] = local_val[c, j]
    return idx, val


@numba.njit(cache=True)
def pack_gaps(idx: np.ndarray) -> tuple[np.ndarray, int]:
    """Ascending indices as fixed-width gaps (first: the index itself) in a bit stream."""
    n = idx.shape[0]
    largest = np.int64(0)
    prev = np.int64(-1)
    for i in range(n):
        largest = max(largest, idx[i] - prev - 1)
        prev = idx[i]
    width = 1
    while largest >= (np.int64(1) << width):
        width += 1
    out = np.zeros((n * width + 7) // 8, dtype=np.uint8)
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    prev = np.int64(-1)
    for i in range(n):
        gap = np.uint64(idx[i] - prev - 1)  # >= 0 for strictly ascending indices
        prev = idx[i]
        acc |= gap << np.uint64(nbits)
        nbits += width
        while nbits >= 8:
            out[pos] = np.uint8(acc & np.uint64(0xFF))
            acc >>= np.uint64(8)
            nbits -= 8
            pos += 1
    if nbits > 0:
        out[pos] = np.uint8(acc & np.uint64(0xFF))
    return out, width


@numba.njit(cache=True)
def unpack_gaps(packed: np.ndarray, n: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_gaps` (``width`` <= 56)."""
    idx = np.empty(n, dtype=np.int64)
    mask = (np.uint64(1) << np.uint64(width)) - np.uint64(1)
    acc = np.uint64(0)
    nbits = 0
    pos = 0
    prev = np.int64(-1)
    for i in range(n):
        while nbits < width:
            acc |= np.uint64(packed[pos]) << np.uint64(nbits)
            pos += 1
            nbits += 8
        gap = np.int64(acc & mask)
        acc >>= np.uint64(width)
        nbits -= width
        prev = prev + gap + 1
        idx[i] = prev
    return idx


@numba.njit(cache=True, parallel=True)
def signed_fill(bits: np.ndarray, value: np.float32, out: np.ndarray) -> None:
    """``out[i] = -value`` where bit i of ``bits`` (packbits order) is set, else ``value``."""
    d = out.shape[0]
    for j in prange(bits.shape[0]):
        byte = bits[j]
        for b in range(8):
            i = 8 * j + b
            if i < d:
                out[i] = -value if (byte >> (7 - b)) & 1 else value


@numba.njit(cache=True, parallel=True)
def ternary_decode(keep: np.ndarray, signs: np.ndarray, scale: np.float32, out: np.ndarray) -> None:
    d = out.shape[0]
    zero = np.float32(0.0)
    for j in prange(keep.shape[0]):
        kb = keep[j]
        sb = signs[j]
        for b in range(8):
            i = 8 * j + b
            if i < d:
                if (kb >> (7 - b)) & 1:
                    out[i] = -scale if (sb >> (7 - b)) & 1 else scale
                else:
                    out[i] = zero


@numba.njit(cache=True, parallel=True)
def abs_max(x: np.ndarray) -> float:
    m = 0.0
    for i in prange(x.shape[0]):
        m = max(m, abs(x[i]))
    return m


@numba.njit(cache=True, parallel=True)
def sum_squares(x: np.ndarray) -> float:
    s = 0.0
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@numba.njit(cache=True, parallel=True)
def qsgd_decode(
    lv: np.ndarray, signs: np.ndarray, step: np.float32, levels: int, out: np.ndarray
) -> bool:
    """``out = ±lv*step``; False if some level exceeds ``levels``."""
    d = out.shape[0]
    bad = 0
    for j in prange(signs.shape[0]):
        sb = signs[j]
        for b in range(8):
            i = 8 * j + b
            if i < d:
                level = lv[i]
                if level > levels:
                    bad += 1
                v = np.float32(level) * step
                out[i] = -v if (sb >> (7 - b)) & 1 else v
    return bad == 0


@numba.njit(cache=True, parallel=True)
def bfloat16_to_float32(bits: np.ndarray, words: np.ndarray) -> bool:
    """bfloat16 bit patterns to float32 bit patterns (exact); False if one is NaN or Inf."""
    bad = 0
    for i in prange(bits.shape[0]):
        w = np.uint32(bits[i]) << np.uint32(16)
        if (w & np.uint32(0x7F800000)) == np.uint32(0x7F800000):
            bad += 1
        words[i] = w
    return bad == 0


@numba.njit(cache=True, parallel=True)
def abs_sum(x: np.ndarray) -> float:
    total = 0.0
    for i in prange(x.shape[0]):
        total += abs(np.float64(x[i]))
    return total


@numba.njit(cache=True, parallel=True)
def qsgd_levels(x: np.ndarray, norm: float, levels: int, seed: np.uint64, lv: np.ndarray) -> None:
    """QSGD levels ``floor(|x|/norm*s + u)`` in [0, s], u from the counter-based hash."""
    inv = levels / norm if norm > 0 else 0.0
    for i in prange(x.shape[0]):
        lv[i] = np.uint8(min(levels, int(abs(x[i]) * inv + _uniform(seed, i))))


@numba.njit(cache=True, parallel=True)
def bernoulli_keep(x: np.ndarray, scale: float, seed: np.uint64, keep: np.ndarray) -> None:
    """TernGrad: keep_i ~ Bernoulli(|x_i| / scale)."""
    inv = 1.0 / scale if scale > 0 else 0.0
    for i in prange(x.shape[0]):
        keep[i] = _uniform(seed, i) < abs(x[i]) * inv


@numba.njit(cache=True, parallel=True)
def float16_to_float32(bits: np.ndarray, out: np.ndarray, words: np.ndarray) -> bool:
    """IEEE half bit patterns to float32 (exact; ``words`` is ``out`` viewed as uint32).

    False if one is NaN or Inf.
    """
    bad = 0
    for i in prange(bits.shape[0]):
        h = np.uint32(bits[i])
        sign = (h & np.uint32(0x8000)) << np.uint32(16)
        exp = (h >> np.uint32(10)) & np.uint32(0x1F)
        mant = h & np.uint32(0x3FF)
        if exp == np.uint32(0x1F):
            bad += 1
            words[i] = sign
        elif exp == np.uint32(0):
            v = np.float32(mant) * np.float32(5.960464477539063e-08)  # mant * 2^-24, exact
            out[i] = -v if sign else v
        else:
            words[i] = sign | ((exp + np.uint32(112)) << np.uint32(23)) | (mant << np.uint32(13))
    return bad == 0


@numba.njit(cache=True, parallel=True)
def quantize_range(
    x: np.ndarray, clip: float, levels: int, weight: int, seed: np.uint64,
    noise: np.ndarray, modmask: np.int64, out: np.ndarray,
) -> None:  # fmt: skip
    """Fixed-range stochastic rounding into Z_{2^b}: ``(weight * q + noise) mod 2^b``.

    The secure sum's quantizer: every client uses the same range (no per-client scale can
    travel through the mask), ``q = floor(clip(x)/clip*levels + u)`` in [-levels, levels]
    (unbiased), weighted, plus its distributed-DP noise (``noise`` empty: none), written as
    the unsigned words masks are added to (two's complement modulo 2^b).
    """
    inv = levels / clip
    noisy = noise.shape[0] > 0
    for i in prange(x.shape[0]):
        v = min(clip, max(-clip, np.float64(x[i]))) * inv
        q = np.int64(min(levels, max(-levels, int(np.floor(v + _uniform(seed, i))))))
        value = q * weight + (noise[i] if noisy else np.int64(0))
        out[i] = value & modmask
