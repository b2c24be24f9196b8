"""Chains: each stage encodes the previous stage's ``values`` field (e.g. top-k -> int8)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fl_ext.codecs.base import Codec, Payload, as_vector
from fl_ext.specs import build_from_spec

PREFIX = "values."


class Chain(Codec):
    """``stages[0]`` encodes x; each next stage encodes the float32 ``values`` of the one before.

    The payload keeps the first stage's other fields and the later stages' fields under
    ``values.`` names. Unbiased when every stage is.
    """

    def __init__(self, *, stages: Sequence[Codec | Mapping[str, Any]]) -> None:
        built = [build_from_spec(s, Codec) if isinstance(s, Mapping) else s for s in stages]
        if not built or not all(isinstance(s, Codec) for s in built):
            raise ValueError(f"a chain needs one or more codecs, got {built!r}")
        self.stages: list[Codec] = built
        self.unbiased = all(s.unbiased for s in built)

    def params(self) -> dict[str, Any]:
        return {"stages": [s.spec() for s in self.stages]}

    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        return self._encode(self.stages, as_vector(x), rng)

    def _encode(self, stages: list[Codec], x: np.ndarray, rng: np.random.Generator) -> Payload:
        payload = stages[0].encode(x, rng)
        if len(stages) == 1:
            return payload
        values = payload.pop("values", None)
        if values is None or values.dtype != np.float32:
            raise ValueError(f"{stages[0]!r} has no float32 'values' for the next stage")
        inner = self._encode(stages[1:], values, rng)
        return {**payload, **{PREFIX + k: v for k, v in inner.items()}}

    @staticmethod
    def _split(payload: Payload) -> tuple[Payload, Payload]:
        outer = {k: v for k, v in payload.items() if not k.startswith(PREFIX)}
        inner = {k[len(PREFIX) :]: v for k, v in payload.items() if k.startswith(PREFIX)}
        return outer, inner

    def check(self, payload: Payload, size: int) -> None:
        self._check(self.stages, payload, size)

    def _check(self, stages: list[Codec], payload: Payload, size: int) -> None:
        if len(stages) == 1:
            stages[0].check(payload, size)
            return
        outer, inner = self._split(payload)
        n = stages[0].values_length(outer, size)
        self._check(stages[1:], inner, n)

    def _decode(self, payload: Payload, size: int) -> np.ndarray:
        return self._decode_stages(self.stages, payload, size)

    def _decode_stages(self, stages: list[Codec], payload: Payload, size: int) -> np.ndarray:
        if len(stages) == 1:
            return stages[0].decode(payload, size)
        outer, inner = self._split(payload)
        n = stages[0].values_length(outer, size)
        values = self._decode_stages(stages[1:], inner, n)
        return stages[0].decode({**outer, "values": values}, size)
