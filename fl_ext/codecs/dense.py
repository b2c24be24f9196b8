"""Identity and half-precision casts (float16, bfloat16)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fl_ext.codecs import kernels
from fl_ext.codecs.base import Codec, Payload, PayloadError, as_vector, field, only_fields


class Identity(Codec):
    """float32 as is (the reference for compression ratios)."""

    unbiased = True

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        return {"values": as_vector(x).copy()}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"values"})
        if not np.isfinite(field(payload, "values", np.float32, (size,))).all():
            raise PayloadError("field 'values' has NaN or Inf")

    def values_length(self, payload: Payload, size: int) -> int:
        return size

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        return payload["values"].copy()


_CASTS = {"float16": (torch.float16, np.float16), "bfloat16": (torch.bfloat16, np.uint16)}


class Cast(Codec):
    """Round to ``float16`` or ``bfloat16`` (2 bytes per value; bfloat16 keeps float32's range)."""

    def __init__(self, *, dtype: str = "float16") -> None:
        if dtype not in _CASTS:
            raise ValueError(f"dtype {dtype!r} is not one of {', '.join(_CASTS)}")
        self.dtype = dtype
        self.unbiased = False

    def params(self) -> dict[str, Any]:
        return {"dtype": self.dtype}

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        t_dtype, np_dtype = _CASTS[self.dtype]
        half = torch.from_numpy(as_vector(x)).to(t_dtype)
        if self.dtype == "bfloat16":
            half = half.view(torch.int16)
        return {"values": half.numpy().view(np_dtype)}

    def check(self, payload: Payload, size: int) -> None:
        only_fields(payload, {"values"})
        field(payload, "values", _CASTS[self.dtype][1], (size,))

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        values = payload["values"]
        if self.dtype == "bfloat16":
            out = np.empty(size, dtype=np.float32)
            finite = kernels.bfloat16_to_float32(values, out.view(np.uint32))
        else:
            out = np.empty(size, dtype=np.float32)
            finite = kernels.float16_to_float32(values.view(np.uint16), out, out.view(np.uint32))
        if not finite:
            raise PayloadError(f"{self.dtype} values hold NaN or Inf")
        return out
