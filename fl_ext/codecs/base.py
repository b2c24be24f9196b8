"""Codec interface: a flat float32 vector <-> a payload of numpy arrays, checked on arrival.

``encode(x, rng) -> Payload`` and ``decode(payload, size) -> x'`` are pure (error-feedback
state lives in :class:`fl_ext.codecs.feedback.ErrorFeedback`, owned by the caller). A payload is
a dict of named numpy arrays, so it maps one to one onto a Flower ArrayRecord and its wire size
is what the serialized record measures. ``check(payload, size)`` validates a payload that came
from outside (names, dtypes, sizes, index ranges, finite scales) and raises
:class:`PayloadError` with the reason; ``decode`` calls it first.

Chains: a stage whose payload carries a float32 ``values`` vector hands it to the next stage
(``Chain``), which stores its own fields under ``values.`` names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

Payload = dict[str, np.ndarray]


class PayloadError(ValueError):
    """A payload does not match its codec (names, dtypes, sizes, ranges, finiteness)."""


def field(payload: Payload, name: str, dtype: Any, shape: tuple[int, ...] | None) -> np.ndarray:
    """``payload[name]`` if it has the dtype (and shape); else :class:`PayloadError`."""
    if name not in payload:
        raise PayloadError(f"payload lacks field {name!r} (has {sorted(payload)})")
    arr = payload[name]
    if not isinstance(arr, np.ndarray) or arr.dtype != np.dtype(dtype):
        got = getattr(arr, "dtype", type(arr).__name__)
        raise PayloadError(f"field {name!r} must be {np.dtype(dtype)}, got {got}")
    if shape is not None and arr.shape != shape:
        raise PayloadError(f"field {name!r} must have shape {shape}, got {arr.shape}")
    return arr


def finite_scalar(payload: Payload, name: str, *, positive: bool = False) -> float:
    """A one-element float32 field that must be finite (and >= 0 when ``positive``)."""
    value = float(field(payload, name, np.float32, (1,))[0])
    if not np.isfinite(value) or (positive and value < 0):
        raise PayloadError(f"field {name!r} must be finite{' and >= 0' if positive else ''}")
    return value


def only_fields(payload: Payload, allowed: set[str]) -> None:
    """Refuse fields the codec does not define (nothing unchecked rides along)."""
    extra = set(payload) - allowed
    if extra:
        raise PayloadError(f"unexpected payload fields {sorted(extra)}")


class Codec(ABC):
    """Lossy or lossless encoding of a flat float32 vector; parameters fixed at construction."""

    unbiased: bool = False  # E[decode(encode(x))] == x over the codec's randomness

    @abstractmethod
    def encode(self, x: np.ndarray, rng: np.random.Generator) -> Payload:
        """Encode ``x`` (1-D float32, finite); ``x`` is not modified."""

    @abstractmethod
    def check(self, payload: Payload, size: int) -> None:
        """Raise :class:`PayloadError` unless ``payload`` is a valid encoding of ``size`` floats."""

    @abstractmethod
    def _decode(self, payload: Payload, size: int) -> np.ndarray: ...

    def decode(self, payload: Payload, size: int) -> np.ndarray:
        """Check, then decode to a float32 vector of ``size``."""
        self.check(payload, size)
        out = self._decode(payload, size)
        if out.shape != (size,) or out.dtype != np.float32:
            raise PayloadError(f"decoded to {out.dtype}{out.shape}, expected float32({size},)")
        return out

    def values_length(self, payload: Payload, size: int) -> int:
        """Length of the float32 ``values`` this payload carries (its other fields checked).

        Chains use it to check the next stage; codecs without ``values`` refuse.
        """
        raise PayloadError(f"{self!r} carries no float32 values for a next stage")

    def spec(self) -> dict[str, Any]:
        """The ``_target_`` spec that rebuilds this codec (travels in the train message)."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **self.params()}

    def params(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"


def payload_bytes(payload: Payload) -> int:
    """Raw bytes of the arrays (the serialized record adds a few bytes of framing per field)."""
    return int(sum(a.nbytes for a in payload.values()))


def as_vector(x: np.ndarray) -> np.ndarray:
    """Validate the encoder's input: 1-D float32, finite."""
    if not isinstance(x, np.ndarray) or x.ndim != 1 or x.dtype != np.float32:
        raise ValueError(f"codecs encode 1-D float32 arrays, got {getattr(x, 'dtype', x)!r}")
    return x
