"""Top-k (exact, or by a threshold estimated from a sample) and random-k sparsification.

Indices travel as fixed-width gaps in a bit stream (``pack_indices=True``, the default): for
top-1% of 1e6 values about 7-8 bits per index instead of 32. Values are float32 in a
``values`` field, which a chain may quantize further (e.g. ``TopK -> BlockQuant(8)``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_ext.codecs import kernels
from fl_ext.codecs.base import Codec, Payload, PayloadError, as_vector, field, only_fields

_SAMPLE = 20_000  # values sampled to estimate the threshold


def _check_fraction(fraction: float) -> float:
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


def _pack(idx: np.ndarray, pack: bool) -> Payload:
    if not pack:
        return {"indices": idx.astype(np.uint32)}
    packed, width = kernels.pack_gaps(idx)
    return {"indices": packed, "index_meta": np.array([len(idx), width], dtype=np.int64)}


def _unpack(payload: Payload, size: int, pack: bool) -> np.ndarray:
    """Indices, checked: in range, strictly ascending (so unique)."""
    if not pack:
        idx = field(payload, "indices", np.uint32, None).astype(np.int64)
    else:
        meta = field(payload, "index_meta", np.int64, (2,))
        n, width = int(meta[0]), int(meta[1])
        if not (0 <= n <= size and 1 <= width <= 56):
            raise PayloadError(f"index_meta {meta.tolist()} impossible for {size} values")
        field(payload, "indices", np.uint8, ((n * width + 7) // 8,))
        idx = kernels.unpack_gaps(payload["indices"], n, width)
    if idx.ndim != 1 or len(idx) > size:
        raise PayloadError(f"{len(idx)} indices for {size} values")
    if len(idx) and (idx[0] < 0 or idx[-1] >= size or (np.diff(idx) <= 0).any()):
        raise PayloadError("indices must be unique, ascending and in range")
    return idx


class TopK(Codec):
    """The ``fraction`` of entries largest in magnitude.

    ``method="exact"``: exactly ``k = ceil(fraction * d)`` entries (ties broken by position).
    ``method="sampled"``: every entry at least as large as a threshold estimated from a random
    sample (about k entries, one pass; Deep Gradient Compression's trick).
    """

    def __init__(
        self, *, fraction: float = 0.01, method: str = "exact", pack_indices: bool = True
    ) -> None:
        self.fraction = _check_fraction(fraction)
        if method not in ("exact", "sampled"):
            raise ValueError(f"method must be 'exact' or 'sampled', got {method!r}")
        self.method, self.pack_indices = method, bool(pack_indices)

    def params(self) -> dict[str, Any]:
        return {"fraction": self.fraction, "method": self.method, "pack_indices": self.pack_indices}

    def _threshold(self, x: np.ndarray, k: int, rng: np.random.Generator, slack: float) -> float:
        d = x.shape[0]
        if d <= _SAMPLE:
            sample = np.abs(x)
        else:
            sample = np.abs(x[rng.integers(0, d, _SAMPLE)])
        rank = min(len(sample) - 1, max(0, int(len(sample) * (1 - slack * k / d))))
        return float(np.partition(sample, rank)[rank])

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        d = x.shape[0]
        k = max(1, min(d, int(np.ceil(self.fraction * d))))
        slack = 1.0 if self.method == "sampled" else 1.5
        cap = int(2 * slack * k / d * kernels.CHUNK) + 64  # per-chunk buffer, rescan beyond
        idx, val = kernels.select_above(x, self._threshold(x, k, rng, slack), cap)
        if self.method == "exact":
            if len(idx) < k:  # the sample overestimated the threshold: take all candidates
                idx, val = kernels.select_above(x, 0.0, kernels.CHUNK)
            if len(idx) > k:
                keep = np.sort(np.argpartition(-np.abs(val), k - 1)[:k])
                idx, val = idx[keep], val[keep]
        return {**_pack(idx, self.pack_indices), "values": val}

    def check(self, payload: Payload, size: int) -> None:
        names = {"indices", "values"} | ({"index_meta"} if self.pack_indices else set())
        only_fields(payload, names)
        idx = _unpack(payload, size, self.pack_indices)
        values = field(payload, "values", np.float32, (len(idx),))
        if not np.isfinite(values).all():
            raise PayloadError("field 'values' has NaN or Inf")

    def values_length(self, payload: Payload, size: int) -> int:
        return len(_unpack(payload, size, self.pack_indices))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        out = np.zeros(size, dtype=np.float32)
        out[_unpack(payload, size, self.pack_indices)] = payload["values"]
        return out


class RandomK(Codec):
    """``k = ceil(fraction * d)`` entries chosen at random, scaled by d/k (unbiased).

    Only the values and a 64-bit seed travel: the receiver draws the same indices.
    """

    unbiased = True

    def __init__(self, *, fraction: float = 0.01) -> None:
        self.fraction = _check_fraction(fraction)

    def params(self) -> dict[str, Any]:
        return {"fraction": self.fraction}

    def _indices(self, seed: int, d: int) -> np.ndarray:
        k = max(1, min(d, int(np.ceil(self.fraction * d))))
        return np.sort(np.random.default_rng(seed).choice(d, size=k, replace=False))

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        seed = int(rng.integers(0, 2**63))
        idx = self._indices(seed, x.shape[0])
        values = x[idx] * np.float32(x.shape[0] / len(idx))
        return {"seed": np.array([seed], dtype=np.int64), "values": values.astype(np.float32)}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"seed", "values"})
        seed = int(field(payload, "seed", np.int64, (1,))[0])
        if seed < 0:
            raise PayloadError("field 'seed' must be >= 0")
        k = max(1, min(size, int(np.ceil(self.fraction * size))))
        if not np.isfinite(field(payload, "values", np.float32, (k,))).all():
            raise PayloadError("field 'values' has NaN or Inf")

    def values_length(self, payload: Payload, size: int) -> int:
        return max(1, min(size, int(np.ceil(self.fraction * size))))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        out = np.zeros(size, dtype=np.float32)
        out[self._indices(int(payload["seed"][0]), size)] = payload["values"]
        return out
