"""Per-channel count, mean and sum of squared deviations, merged exactly (Chan et al. 1979).

Each client reports ``(count, mean, m2)`` per channel, computed in float64 with two passes
over its own data; the server merges them pairwise with Chan's update
``m2 = m2_a + m2_b + delta^2 n_a n_b / n``. Nothing here subtracts two large sums, so the
variance keeps full precision even for data far from zero, unlike ``sum(x^2) - n mean^2``
(which loses every digit when the mean dominates, and is what makes some federated
analytics clamp negative variances to zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """``count``, ``mean`` and ``m2`` (sum of squared deviations from the mean) per channel."""

    count: np.ndarray  # int64 [C]
    mean: np.ndarray  # float64 [C]
    m2: np.ndarray  # float64 [C]

    def __post_init__(self) -> None:
        shapes = {a.shape for a in (self.count, self.mean, self.m2)}
        if len(shapes) != 1 or self.count.ndim != 1:
            raise ValueError(
                f"count, mean and m2 must be 1-d of one length, got shapes "
                f"{self.count.shape}, {self.mean.shape}, {self.m2.shape}"
            )
        if (self.count < 0).any():
            raise ValueError(f"counts must be >= 0, got {self.count.tolist()}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.m2).all()):
            raise ValueError("mean and m2 must be finite")
        if (self.m2 < 0).any():
            raise ValueError(f"m2 (sum of squared deviations) must be >= 0, got {self.m2.tolist()}")

    @property
    def channels(self) -> int:
        """Number of channels (features)."""
        return int(self.count.shape[0])

    @classmethod
    def of(cls, x: np.ndarray, *, channel_axis: int = 1) -> Moments:
        """Moments of ``x`` per index of ``channel_axis`` over every other axis, in float64.

        Two passes (mean, then squared deviations from it): exact to float64 rounding.
        """
        data = np.moveaxis(np.asarray(x, dtype=np.float64), channel_axis, 0)
        flat = data.reshape(data.shape[0], -1)
        n = flat.shape[1]
        mean = flat.mean(axis=1) if n else np.zeros(flat.shape[0])
        m2 = ((flat - mean[:, None]) ** 2).sum(axis=1)
        return cls(np.full(flat.shape[0], n, dtype=np.int64), mean, m2)

    @classmethod
    def empty(cls, channels: int) -> Moments:
        """The moments of no data (the identity of :func:`merge`)."""
        return cls(np.zeros(channels, np.int64), np.zeros(channels), np.zeros(channels))

    def variance(self, *, ddof: int = 0) -> np.ndarray:
        """Per-channel variance (``ddof=0``: population, as normalisation uses)."""
        denom = self.count - ddof
        if (denom <= 0).any():
            raise ValueError(f"variance with ddof={ddof} needs counts > {ddof}")
        return np.asarray(self.m2 / denom, dtype=np.float64)

    def std(self, *, ddof: int = 0) -> np.ndarray:
        """Per-channel standard deviation."""
        return np.asarray(np.sqrt(self.variance(ddof=ddof)), dtype=np.float64)

    def to_json(self) -> dict[str, list[float] | list[int]]:
        """A JSON-able copy (float64 values survive ``json`` exactly via ``repr``)."""
        return {
            "count": [int(c) for c in self.count],
            "mean": [float(m) for m in self.mean],
            "m2": [float(v) for v in self.m2],
        }

    @classmethod
    def from_json(cls, data: dict[str, Sequence[float]]) -> Moments:
        """Inverse of :meth:`to_json`."""
        return cls(
            np.asarray(data["count"], dtype=np.int64),
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["m2"], dtype=np.float64),
        )


def merge(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s exact merge of two disjoint samples' moments."""
    if a.channels != b.channels:
        raise ValueError(f"cannot merge moments of {a.channels} and {b.channels} channels")
    n = a.count + b.count
    safe = np.where(n > 0, n, 1).astype(np.float64)
    delta = b.mean - a.mean
    mean = np.where(n > 0, a.mean + delta * (b.count / safe), 0.0)
    m2 = a.m2 + b.m2 + delta**2 * (a.count.astype(np.float64) * b.count / safe)
    return Moments(n, mean, m2)


def merge_all(parts: Sequence[Moments]) -> Moments:
    """Merge many samples' moments pairwise (a balanced tree keeps rounding small)."""
    if not parts:
        raise ValueError("merge_all needs at least one Moments")
    level = list(parts)
    while len(level) > 1:
        nxt = [merge(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]
