"""Per-node update statistics and a per-round summary: the numbers telemetry and detectors read.

Everything is computed in float64 from the (float32) rows. A distance is the norm of the
actual difference ``||x - c||``, never ``sqrt(||x||^2 + ||c||^2 - 2 x.c)``: that form loses
every digit when a row is close to the center, which is exactly the case that matters (a
near-copy). Node ids never enter these arrays (they are 64-bit and would round in a float).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_ext.telemetry._arrays import Array, rows_f64, vector_f64
from fl_ext.telemetry._validate import check_int


@dataclass(frozen=True)
class NodeStats:
    """One row's geometry: its norm, its cosine to the aggregate, its distance to the center.

    ``zero_norm`` marks a row of norm 0 (its cosine is reported as 0.0: undefined, not aligned).
    """

    norm: float
    cosine_to_aggregate: float
    distance_to_center: float
    zero_norm: bool = False

    @property
    def cosine_gap(self) -> float:
        """``1 - cosine``: 0 aligned with the aggregate, 1 orthogonal, 2 opposite."""
        return 1.0 - self.cosine_to_aggregate


def node_stats(
    updates: Array, aggregate: Array | None, *, center: Array | None = None
) -> list[NodeStats]:
    """Stats of each row of ``updates [n, d]``.

    ``aggregate`` is the round's combined update (None: the plain mean of the rows);
    ``center`` defaults to the coordinate-wise median of the rows, which a minority of
    attackers cannot drag far, so honest rows stay close to it.
    """
    x = rows_f64(updates)
    n, d = x.shape
    agg = x.mean(axis=0) if aggregate is None or n == 0 else vector_f64(aggregate, d, "aggregate")
    if n == 0:
        return []
    c = np.median(x, axis=0) if center is None else vector_f64(center, d, "center")
    norms = np.linalg.norm(x, axis=1)
    agg_norm = float(np.linalg.norm(agg))
    dots = x @ agg
    dists = np.linalg.norm(x - c, axis=1)
    out = []
    for norm, dot, dist in zip(norms.tolist(), dots.tolist(), dists.tolist(), strict=True):
        cos = 0.0 if norm == 0.0 or agg_norm == 0.0 else dot / (norm * agg_norm)
        out.append(NodeStats(norm, min(1.0, max(-1.0, cos)), dist, zero_norm=norm == 0.0))
    return out


def _nonneg_finite(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.ndim != 1 or not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"{name} must be finite numbers >= 0")
    return arr


def round_summary(
    stats: Sequence[NodeStats],
    *,
    reply_seconds: Sequence[float],
    asked: int,
    answered: int,
    reply_bytes: Sequence[float] | None = None,
) -> dict[str, float]:
    """One round's telemetry as flat floats (what a tracker logs).

    Keys whose inputs are empty are left out rather than set to NaN: ``drop_rate`` needs
    ``asked > 0``, the ``reply_s_*`` percentiles need reply times, the divergence and norm
    figures need at least one row. Percentiles are numpy's (linear interpolation).
    """
    asked = check_int("asked", asked, low=0)
    answered = check_int("answered", answered, low=0, high=asked)
    out: dict[str, float] = {"asked": float(asked), "answered": float(answered)}
    if asked:
        out["drop_rate"] = 1.0 - answered / asked
    seconds = _nonneg_finite(reply_seconds, "reply_seconds")
    if seconds.size:
        for q in (50, 90, 99):
            out[f"reply_s_p{q}"] = float(np.percentile(seconds, q))
        out["reply_s_max"] = float(seconds.max())
    if reply_bytes is not None:
        sizes = _nonneg_finite(reply_bytes, "reply_bytes")
        out["reply_bytes_total"] = float(sizes.sum())
        if sizes.size:
            out["reply_bytes_p50"] = float(np.percentile(sizes, 50))
    out["nodes"] = float(len(stats))
    out["zero_norm"] = float(sum(s.zero_norm for s in stats))
    if stats:
        gaps = np.array([s.cosine_gap for s in stats])
        norms = np.array([s.norm for s in stats])
        dists = np.array([s.distance_to_center for s in stats])
        out["cos_gap_mean"] = float(gaps.mean())
        out["cos_gap_max"] = float(gaps.max())
        out["norm_p50"] = float(np.percentile(norms, 50))
        out["norm_max"] = float(norms.max())
        out["dist_center_p50"] = float(np.percentile(dists, 50))
        out["dist_center_max"] = float(dists.max())
    return out
