"""Blockwise int8/int4 quantization (per-block absmax scale) and QSGD (Alistarh et al., 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fl_ext.codecs import kernels
from fl_ext.codecs.base import (
    Codec,
    Payload,
    PayloadError,
    as_vector,
    field,
    finite_scalar,
    only_fields,
)

_LEVELS = {8: 127, 4: 7}


def _seed(rng: np.random.Generator) -> np.uint64:
    return np.uint64(rng.integers(0, 2**63))


class BlockQuant(Codec):
    """``bits`` (8 or 4) per value plus one float32 scale per ``block`` values.

    ``rounding="stochastic"`` makes it unbiased (E[decode] = x); ``"nearest"`` halves the error.
    """

    def __init__(self, *, bits: int = 8, block: int = 256, rounding: str = "nearest") -> None:
        if bits not in _LEVELS:
            raise ValueError(f"bits must be 8 or 4, got {bits!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block < 2:
            raise ValueError(f"block must be an integer >= 2, got {block!r}")
        if rounding not in ("nearest", "stochastic"):
            raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
        self.bits, self.block, self.rounding = bits, block, rounding
        self.unbiased = rounding == "stochastic"

    def params(self) -> dict[str, Any]:
        return {"bits": self.bits, "block": self.block, "rounding": self.rounding}

    def _blocks(self, size: int) -> int:
        return (size + self.block - 1) // self.block

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        q = np.empty(x.shape[0], dtype=np.int8)
        scales = np.empty(self._blocks(x.shape[0]), dtype=np.float32)
        kernels.quantize_blocks(
            x, self.block, _LEVELS[self.bits], self.rounding == "stochastic", _seed(rng), q, scales
        )
        if self.bits == 4:
            packed = np.empty((x.shape[0] + 1) // 2, dtype=np.uint8)
            kernels.pack_nibbles(q, packed)
            return {"q": packed, "scales": scales}
        return {"q": q, "scales": scales}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"q", "scales"})
        scales = field(payload, "scales", np.float32, (self._blocks(size),))
        if not (np.isfinite(scales).all() and (scales >= 0).all()):
            raise PayloadError("field 'scales' must be finite and >= 0")
        if self.bits == 4:
            field(payload, "q", np.uint8, ((size + 1) // 2,))
        else:
            q = field(payload, "q", np.int8, (size,))
            if (q == -128).any():
                raise PayloadError("field 'q' holds -128, outside [-127, 127]")

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        q = payload["q"]
        if self.bits == 4:
            unpacked = np.empty(size, dtype=np.int8)
            kernels.unpack_nibbles(q, size, unpacked)
            q = unpacked
        out = np.empty(size, dtype=np.float32)
        kernels.dequantize_blocks(q, payload["scales"], self.block, out)
        return out


class QSGD(Codec):
    """QSGD with ``levels`` levels: ``||x|| * sign(x_i) * l_i / s``, ``l_i`` stochastic (unbiased).

    Stored as the norm (float32), one level byte per value and one sign bit per value.
    """

    unbiased = True

    def __init__(self, *, levels: int = 16) -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 255:
            raise ValueError(f"levels must be an integer in [1, 255], got {levels!r}")
        self.levels = levels

    def params(self) -> dict[str, Any]:
        return {"levels": self.levels}

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        norm = float(np.sqrt(kernels.sum_squares(x)))
        lv = np.empty(x.shape[0], dtype=np.uint8)
        kernels.qsgd_levels(x, norm, self.levels, _seed(rng), lv)
        signs = np.packbits(np.signbit(x))
        return {"norm": np.array([norm], dtype=np.float32), "levels": lv, "signs": signs}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"norm", "levels", "signs"})
        finite_scalar(payload, "norm", positive=True)
        field(payload, "levels", np.uint8, (size,))
        field(payload, "signs", np.uint8, ((size + 7) // 8,))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        step = np.float32(float(payload["norm"][0]) / self.levels)
        out = np.empty(size, dtype=np.float32)
        if not kernels.qsgd_decode(payload["levels"], payload["signs"], step, self.levels, out):
            raise PayloadError(f"field 'levels' exceeds {self.levels}")
        return out
