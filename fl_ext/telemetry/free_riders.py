"""Free-riders: clients that send something other than training.

Flags, per round: ``unchanged`` (the global model sent back: a zero update, or one below
``zero_tol`` of the round's median norm), ``stale`` (a replay of an update seen in the last
``memory`` rounds, from any node), ``duplicate`` (two nodes sending the same update in one
round: copying or collusion; every copy is flagged), ``noise`` (no alignment with the round:
cosine to the coordinate-wise median below ``noise_cos`` while the typical node's is above
``honest_cos``; off when the round itself is not aligned, e.g. very non-IID data, where it
would flag honest nodes).

Updates are compared through a count sketch (``sketch_dim`` signed buckets, seeded): never
stored in full, and the sketch's cosine of two different updates is within about
``1/sqrt(sketch_dim)`` of their true one, so a replay (cosine ~1) stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class FreeRiderDetector:
    """Per-round free-rider flags with a short, sketched memory of earlier updates."""

    def __init__(
        self,
        *,
        zero_tol: float = 1e-3,
        stale_cos: float = 0.999,
        noise_cos: float = 0.15,
        honest_cos: float = 0.3,
        memory: int = 5,
        sketch_dim: int = 256,
        seed: int = 0,
    ) -> None:
        for name, value, lo, hi in (
            ("zero_tol", zero_tol, 0.0, 1.0), ("stale_cos", stale_cos, 0.0, 1.0),
            ("noise_cos", noise_cos, 0.0, 1.0), ("honest_cos", honest_cos, 0.0, 1.0),
        ):  # fmt: skip
            if not lo <= value <= hi:
                raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
        if memory < 0 or sketch_dim < 16:
            raise ValueError(
                f"memory must be >= 0 and sketch_dim >= 16, got {memory}, {sketch_dim}"
            )
        self.zero_tol, self.stale_cos = float(zero_tol), float(stale_cos)
        self.noise_cos, self.honest_cos = float(noise_cos), float(honest_cos)
        self.memory, self.sketch_dim, self.seed = int(memory), int(sketch_dim), int(seed)
        self.history: list[np.ndarray] = []  # per earlier round: unit sketches [k, sketch_dim]
        self._hash: tuple[np.ndarray, np.ndarray] | None = None

    def _sketch(self, updates: torch.Tensor) -> np.ndarray:
        d = updates.shape[1]
        if self._hash is None or self._hash[0].size != d:
            if self._hash is not None:
                self.history = []  # another model size: earlier sketches do not compare
            rng = np.random.default_rng(self.seed)
            self._hash = (rng.integers(self.sketch_dim, size=d), rng.choice([-1.0, 1.0], size=d))
        bucket, sign = self._hash
        x = updates.detach().double().numpy() * sign
        out = np.zeros((x.shape[0], self.sketch_dim))
        for i in range(x.shape[0]):
            out[i] = np.bincount(bucket, weights=x[i], minlength=self.sketch_dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: np.ndarray = np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)
        return unit

    def flags(self, node_ids: Sequence[int], updates: torch.Tensor) -> dict[int, str]:
        """``{node: reason}`` for this round's flagged rows (the memory then moves on)."""
        if updates.shape[0] != len(node_ids):
            raise ValueError(f"{len(node_ids)} node ids for {updates.shape[0]} updates")
        if not node_ids:
            return {}
        x = updates.detach().double()
        norms = torch.linalg.vector_norm(x, dim=1).numpy()
        median = float(np.median(norms))
        sketches = self._sketch(updates)
        center = x.median(dim=0).values
        c_norm = float(torch.linalg.vector_norm(center))
        cos = (x @ center).numpy() / np.maximum(norms * c_norm, 1e-300)
        aligned = float(np.median(cos)) >= self.honest_cos
        out: dict[int, str] = {}
        same = sketches @ sketches.T
        for i, node in enumerate(node_ids):
            if norms[i] == 0 or norms[i] < self.zero_tol * median:
                out[node] = "unchanged: returned the global model (zero update)"
            elif any(float(np.max(old @ sketches[i], initial=-1.0)) >= self.stale_cos
                     for old in self.history):  # fmt: skip
                out[node] = "stale: replays an update of an earlier round"
            elif any(same[i, j] >= self.stale_cos for j in range(len(node_ids)) if j != i):
                out[node] = "duplicate: the same update as another node this round"
            elif aligned and abs(cos[i]) < self.noise_cos:
                out[node] = (
                    f"noise: cosine {cos[i]:.3f} to the round's median, typical "
                    f"{float(np.median(cos)):.3f}"
                )
        if self.memory:
            self.history = [*self.history, sketches[norms > 0]][-self.memory :]
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "sketch": np.array([self.seed, self.sketch_dim], dtype=np.int64),
            **{f"history{i}": h for i, h in enumerate(self.history)},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [int(v) for v in np.asarray(state.get("sketch", [self.seed, self.sketch_dim]))]
        if saved != [self.seed, self.sketch_dim]:
            raise ValueError(
                f"free-rider state was sketched with seed/size {saved}, this detector uses "
                f"{[self.seed, self.sketch_dim]}: replays would go unseen"
            )
        keys = sorted((k for k in state if k.startswith("history")), key=lambda k: int(k[7:]))
        self.history = [np.asarray(state[k], dtype=np.float64) for k in keys]
