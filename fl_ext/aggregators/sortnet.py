"""Column-wise order statistics on the CPU by a bitonic sorting network (numba).

Coordinate-wise rules (median, trimmed mean, Bulyan's last step) need, per coordinate, the n
client values in order. ``torch.sort(dim=0)`` does that one column at a time with branchy
comparisons; here a block of columns is copied into a [rows, columns] buffer padded to a power
of two with +inf, and a bitonic network (a fixed sequence of min/max pairs) sorts all columns of
the block at once. The inner loop runs over contiguous columns, so it compiles to SIMD min/max,
and blocks run in parallel. Exact: only comparisons and copies, no arithmetic on the values.

Inputs must be finite (aggregators check that before a rule runs): +inf is the padding.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import prange

_COLS = 64  # columns per block: buffer rows stay in L1 for n up to ~128
_MAX_THREADS: int = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]


@numba.njit(cache=True, inline="always")
def _sort_block(buf: np.ndarray, rows: int) -> None:
    """Sort each column of ``buf[:rows]`` (``rows`` a power of two) ascending, in place."""
    width = buf.shape[1]
    k = 2
    while k <= rows:
        j = k // 2
        while j > 0:
            for i in range(rows):
                partner = i ^ j
                if partner > i:
                    lo, hi = (i, partner) if (i & k) == 0 else (partner, i)
                    for c in range(width):
                        a = buf[lo, c]
                        b = buf[hi, c]
                        buf[lo, c] = min(a, b)
                        buf[hi, c] = max(a, b)
            j //= 2
        k *= 2


@numba.njit(cache=True, inline="always")
def _load_block(x: np.ndarray, start: int, buf: np.ndarray) -> int:
    n, d = x.shape
    width = min(buf.shape[1], d - start)
    buf[:] = np.inf
    for i in range(n):
        for c in range(width):
            buf[i, c] = x[i, start + c]
    return int(width)


@numba.njit(cache=True, parallel=True)
def _sorted_window_mean(x: np.ndarray, lo: int, hi: int, rows: int, out: np.ndarray) -> None:
    """``out[j]`` = mean of the ``lo..hi-1``-th smallest values of column ``j`` (float64 sum)."""
    d = x.shape[1]
    blocks = (d + _COLS - 1) // _COLS
    for b in prange(blocks):
        buf = np.empty((rows, _COLS), dtype=x.dtype)
        acc = np.empty(_COLS, dtype=np.float64)
        start = b * _COLS
        width = _load_block(x, start, buf)
        _sort_block(buf, rows)
        acc[:] = 0.0
        for r in range(lo, hi):
            for c in range(_COLS):
                acc[c] += buf[r, c]
        for c in range(width):
            out[start + c] = acc[c] / (hi - lo)


@numba.njit(cache=True, parallel=True)
def _closest_to_median_mean(x: np.ndarray, beta: int, rows: int, out: np.ndarray) -> None:
    """``out[j]`` = mean of the ``beta`` values of column ``j`` closest to its median.

    In sorted order those values are a contiguous window around the median; it is grown one
    value at a time towards the nearer neighbour (ties towards the lower value).
    """
    n, d = x.shape
    blocks = (d + _COLS - 1) // _COLS
    for b in prange(blocks):
        buf = np.empty((rows, _COLS), dtype=x.dtype)
        start = b * _COLS
        width = _load_block(x, start, buf)
        _sort_block(buf, rows)
        for c in range(width):
            med = 0.5 * np.float64(buf[(n - 1) // 2, c]) + 0.5 * np.float64(buf[n // 2, c])
            left = (n - 1) // 2  # next candidate below the window
            right = left + 1  # next candidate above the window
            total = 0.0
            for _ in range(beta):
                take_left = right >= n or (
                    left >= 0 and med - np.float64(buf[left, c]) <= np.float64(buf[right, c]) - med
                )
                if take_left:
                    total += np.float64(buf[left, c])
                    left -= 1
                else:
                    total += np.float64(buf[right, c])
                    right += 1
            out[start + c] = total / beta


def kernel_applies(x: torch.Tensor) -> bool:
    """Kernels take CPU float32/float64; other devices and dtypes use the ``torch.sort`` path."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _padded_rows(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    # One thread budget for torch and the kernels: follow torch.set_num_threads.
    numba.set_num_threads(max(1, min(torch.get_num_threads(), _MAX_THREADS)))
    return x.detach().contiguous().numpy()


def sorted_window_mean(x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Per column, the mean of order statistics ``lo`` to ``hi - 1`` (0-based) of ``x`` [n, d].

    ``lo = (n-1)//2, hi = n//2 + 1`` is the median; ``lo = f, hi = n - f`` the trimmed mean.
    """
    n = x.shape[0]
    if not 0 <= lo < hi <= n:
        raise ValueError(f"order statistics [{lo}, {hi}) outside 0..{n}")
    out = np.empty(x.shape[1], dtype=np.float64)
    _sorted_window_mean(_as_numpy(x), lo, hi, _padded_rows(n), out)
    return torch.from_numpy(out).to(x.dtype)


def closest_to_median_mean(x: torch.Tensor, beta: int) -> torch.Tensor:
    """Per column, the mean of the ``beta`` values closest to the column's median."""
    n = x.shape[0]
    if not 1 <= beta <= n:
        raise ValueError(f"beta={beta} outside 1..{n}")
    out = np.empty(x.shape[1], dtype=np.float64)
    _closest_to_median_mean(_as_numpy(x), beta, _padded_rows(n), out)
    return torch.from_numpy(out).to(x.dtype)
