"""Parameter checks shared by the telemetry classes: one ValueError naming value and range."""

from __future__ import annotations

import math
from collections.abc import Sequence


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]`` (bools are not integers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float in the interval; the message shows the interval."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low)
    ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return v


def check_node_ids(node_ids: Sequence[int], rows: int) -> list[int]:
    """Distinct integer ids, one per row (ids stay Python ints: 64-bit, never floats)."""
    ids: list[int] = []
    for node in node_ids:
        if isinstance(node, bool) or not isinstance(node, int):
            raise ValueError(f"node ids must be integers, got {node!r}")
        ids.append(int(node))
    if len(ids) != rows:
        raise ValueError(f"got {len(ids)} node ids for {rows} rows")
    if len(set(ids)) != len(ids):
        raise ValueError("node ids must be distinct within a round")
    return ids
