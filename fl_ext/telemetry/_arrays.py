"""Read update rows (torch or numpy, any float dtype) as float64 without touching the input."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

Array = torch.Tensor | np.ndarray

CHUNK = 1 << 16  # columns per pass: bounds the float64 array at n * CHUNK values


def shape_of(x: Array) -> tuple[int, ...]:
    """The shape of a tensor or an array."""
    return tuple(int(s) for s in x.shape)


def to_f64(x: Array) -> np.ndarray:
    """``x`` as float64 on the CPU (a copy unless it already is); callers never write to it."""
    if isinstance(x, torch.Tensor):
        return np.asarray(x.detach().to(device="cpu", dtype=torch.float64).numpy())
    return np.asarray(x, dtype=np.float64)


def rows_f64(updates: Array, name: str = "updates") -> np.ndarray:
    """``updates`` as a finite float64 ``[n, d]`` copy."""
    if len(shape_of(updates)) != 2:
        raise ValueError(f"{name} must be 2-d [nodes, params], got shape {shape_of(updates)}")
    x = to_f64(updates)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(f"{name} rows {bad.tolist()} are not finite")
    return x


def vector_f64(v: Array, d: int, name: str) -> np.ndarray:
    """``v`` as a finite float64 ``[d]`` copy."""
    if shape_of(v) != (d,):
        raise ValueError(f"{name} must have shape ({d},), got {shape_of(v)}")
    out = to_f64(v)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} is not finite")
    return out


def column_chunks(updates: Array, name: str = "updates") -> Iterator[tuple[int, np.ndarray]]:
    """``(start, rows[:, start:start + CHUNK])`` in float64, checked finite, chunk by chunk."""
    if len(shape_of(updates)) != 2:
        raise ValueError(f"{name} must be 2-d [nodes, params], got shape {shape_of(updates)}")
    d = shape_of(updates)[1]
    for start in range(0, d, CHUNK):
        part = to_f64(updates[:, start : start + CHUNK])
        bad = np.flatnonzero(~np.isfinite(part).all(axis=1))
        if bad.size:
            raise ValueError(f"{name} rows {bad.tolist()} are not finite")
        yield start, part


def gram(updates: Array) -> np.ndarray:
    """``X X^T`` in float64, accumulated over column chunks (no float64 array of all of X)."""
    n = shape_of(updates)[0]
    g = np.zeros((n, n))
    for _, part in column_chunks(updates):
        g += part @ part.T
    return g
