"""One central check of client replies; a bad reply becomes a :class:`Rejection`, not an error.

Every value in a reply comes from a client and is hostile until checked: array names, shapes,
dtypes, finiteness, the update's norm, the reported example count and metric values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from numbers import Real
from typing import Any

import numpy as np
import torch

from fl_ext.params import ParamSpec


class RejectReason(StrEnum):
    """Why a reply was not used; the value is what logs and MLflow show."""

    MALFORMED = "malformed"
    KEYS_MISMATCH = "keys_mismatch"
    SHAPE_MISMATCH = "shape_mismatch"
    DTYPE_MISMATCH = "dtype_mismatch"
    NON_FINITE = "non_finite"
    NORM_TOO_LARGE = "norm_too_large"
    BAD_EXAMPLE_COUNT = "bad_example_count"
    BAD_METRIC = "bad_metric"
    INCOMPATIBLE = "incompatible"  # fl-ext version or model schema the server cannot use
    OVER_BUDGET = "over_budget"  # its DP-SGD spend took its client past the privacy budget
    QUARANTINED = "quarantined"  # governance: the node is quarantined or suspended


@dataclass(frozen=True)
class Rejection:
    """A rejected reply: the reason category and a human-readable detail."""

    reason: RejectReason
    detail: str

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


def check_arrays(arrays: Mapping[str, np.ndarray], expected: ParamSpec) -> Rejection | None:
    """Names, order, shapes, dtypes and finiteness must match ``expected`` exactly."""
    names = tuple(arrays)
    if names != expected.names:
        missing = sorted(set(expected.names) - set(names))
        extra = sorted(set(names) - set(expected.names))
        detail = f"missing {missing}, unexpected {extra}" if missing or extra else "wrong order"
        return Rejection(RejectReason.KEYS_MISMATCH, detail)
    for name, shape, dtype in zip(expected.names, expected.shapes, expected.dtypes, strict=True):
        arr = arrays[name]
        if tuple(arr.shape) != shape:
            return Rejection(
                RejectReason.SHAPE_MISMATCH,
                f"'{name}' has shape {tuple(arr.shape)}, expected {shape}",
            )
        if arr.dtype != dtype:
            return Rejection(
                RejectReason.DTYPE_MISMATCH, f"'{name}' has dtype {arr.dtype}, expected {dtype}"
            )
        if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
            return Rejection(RejectReason.NON_FINITE, f"'{name}' contains NaN or Inf")
    return None


def update_norm(row: torch.Tensor) -> float:
    """L2 norm of a float32 update, summed in float64.

    In float32 the sum of squares overflows for values above ~1e19 and a finite but absurd
    update would be reported as non-finite; in float64 it is ``norm_too_large``.
    """
    return float(torch.linalg.vector_norm(row, dtype=torch.float64))


def check_update_norm(norm: float, max_norm: float | None) -> Rejection | None:
    """The L2 norm of the update (reply minus global model) must be finite and bounded."""
    if not math.isfinite(norm):
        return Rejection(RejectReason.NON_FINITE, f"update norm is {norm}")
    if max_norm is not None and norm > max_norm:
        return Rejection(
            RejectReason.NORM_TOO_LARGE,
            f"update norm {norm:.4g} exceeds max_update_norm {max_norm:.4g}",
        )
    return None


def check_example_count(value: Any, max_examples: int | None) -> Rejection | None:
    """The reported example count must be a positive integer not above ``max_examples``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return Rejection(RejectReason.BAD_EXAMPLE_COUNT, f"num-examples is {value!r}, not a number")
    count = float(value)
    if not math.isfinite(count) or not count.is_integer():
        return Rejection(
            RejectReason.BAD_EXAMPLE_COUNT, f"num-examples {value!r} is not an integer"
        )
    if count < 1:
        return Rejection(RejectReason.BAD_EXAMPLE_COUNT, f"num-examples {value!r} is below 1")
    if max_examples is not None and count > max_examples:
        return Rejection(
            RejectReason.BAD_EXAMPLE_COUNT,
            f"num-examples {int(count)} exceeds the plausible maximum {max_examples}",
        )
    return None


def check_metrics(
    metrics: Mapping[str, Any],
    required: tuple[str, ...],
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> Rejection | None:
    """Required scalar metrics present and finite; optional ``[low, high]`` bounds per key."""
    for key in required:
        if key not in metrics:
            return Rejection(RejectReason.BAD_METRIC, f"metric '{key}' is missing")
    for key, value in metrics.items():
        if isinstance(value, list):
            values = value
        else:
            values = [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)):
                return Rejection(RejectReason.BAD_METRIC, f"metric '{key}' is {value!r}")
            if bounds and key in bounds:
                low, high = bounds[key]
                if not low <= float(v) <= high:
                    return Rejection(
                        RejectReason.BAD_METRIC, f"metric '{key}'={v!r} outside [{low}, {high}]"
                    )
    return None
