"""One-bit sign with a scale (signSGD / EF-signSGD) and stochastic ternary (TernGrad)."""

from __future__ import annotations

import numpy as np

from fl_ext.codecs import kernels
from fl_ext.codecs.base import Codec, Payload, as_vector, field, finite_scalar, only_fields


class SignScale(Codec):
    """``mean(|x|) * sign(x)``: 1 bit per value plus one float (Karimireddy et al., 2019)."""

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        scale = kernels.abs_sum(x) / len(x) if len(x) else 0.0
        return {"scale": np.array([scale], dtype=np.float32), "signs": np.packbits(np.signbit(x))}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"scale", "signs"})
        finite_scalar(payload, "scale", positive=True)
        field(payload, "signs", np.uint8, ((size + 7) // 8,))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.float32)
        kernels.signed_fill(payload["signs"], np.float32(payload["scale"][0]), out)
        return out


class Ternary(Codec):
    """TernGrad (Wen et al., 2017): ``max|x| * sign(x_i) * b_i``, ``b_i ~ Bernoulli(|x_i|/max|x|)``.

    Unbiased; two bits per value (a keep bit and a sign bit) plus one float.
    """

    unbiased = True

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        scale = kernels.abs_max(x) if len(x) else 0.0
        keep = np.empty(len(x), dtype=np.bool_)
        kernels.bernoulli_keep(x, scale, np.uint64(rng.integers(0, 2**63)), keep)
        return {
            "scale": np.array([scale], dtype=np.float32),
            "keep": np.packbits(keep),
            "signs": np.packbits(np.signbit(x)),
        }

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"scale", "keep", "signs"})
        finite_scalar(payload, "scale", positive=True)
        field(payload, "keep", np.uint8, ((size + 7) // 8,))
        field(payload, "signs", np.uint8, ((size + 7) // 8,))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        out = np.empty(size, dtype=np.float32)
        kernels.ternary_decode(
            payload["keep"], payload["signs"], np.float32(payload["scale"][0]), out
        )
        return out
