"""One-bit sign with a scale (signSGD / EF-signSGD) and stochastic ternary (TernGrad)."""

from __future__ import annotations

import numpy as np

from fl_ext.codecs import kernels
from fl_ext.codecs.base import Codec, Payload, as_vector, field, finite_scalar, only_fields


class SignScale(Codec):
    """``mean(|x|) * sign(x)``: 1 bit per value plus one float (Karimireddy et al., 2019)."""

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        scale = float(np.abs(x).mean(dtype=np.float64)) if len(x) else 0.0
        return {"scale": np.array([scale], dtype=np.float32), "signs": np.packbits(x < 0)}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"scale", "signs"})
        finite_scalar(payload, "scale", positive=True)
        field(payload, "signs", np.uint8, ((size + 7) // 8,))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        scale = np.float32(payload["scale"][0])
        negative = np.unpackbits(payload["signs"], count=size).astype(bool)
        return np.where(negative, -scale, scale).astype(np.float32)


class Ternary(Codec):
    """TernGrad (Wen et al., 2017): ``max|x| * sign(x_i) * b_i``, ``b_i ~ Bernoulli(|x_i|/max|x|)``.

    Unbiased; two bits per value (a keep bit and a sign bit) plus one float.
    """

    unbiased = True

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        x = as_vector(x)
        scale = float(np.abs(x).max()) if len(x) else 0.0
        keep = np.empty(x.shape[0], dtype=np.bool_)
        kernels.stochastic_ternary(x, scale, np.uint64(rng.integers(0, 2**63)), keep)
        return {
            "scale": np.array([scale], dtype=np.float32),
            "keep": np.packbits(keep),
            "signs": np.packbits(x < 0),
        }

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"scale", "keep", "signs"})
        finite_scalar(payload, "scale", positive=True)
        field(payload, "keep", np.uint8, ((size + 7) // 8,))
        field(payload, "signs", np.uint8, ((size + 7) // 8,))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        scale = np.float32(payload["scale"][0])
        keep = np.unpackbits(payload["keep"], count=size).astype(np.float32)
        negative = np.unpackbits(payload["signs"], count=size).astype(bool)
        out = keep * scale
        np.negative(out, out=out, where=negative)
        return out
