"""An online suspicion score per node from robust z-scores of its updates over rounds.

Each round, per feature (log update norm, cosine gap to the round's coordinate-wise median,
distance to it), every node's value becomes a robust z-score against the round (median and
MAD, so the attackers cannot move the reference much while they are a minority); a node's
round score is its largest positive z. Its suspicion is the mean of its last ``window``
round scores: one noisy round does not condemn a node, a steady attacker stands out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

FEATURES = ("log_norm", "cos_gap", "distance")


def round_features(updates: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-row features of one round (float64), against its coordinate-wise median."""
    x = updates.detach().double()
    center = x.median(dim=0).values
    norms = torch.linalg.vector_norm(x, dim=1)
    c_norm = float(torch.linalg.vector_norm(center))
    cos = (x @ center) / torch.clamp(norms * c_norm, min=1e-300)
    return {
        "log_norm": torch.log(norms + 1e-12).numpy(),
        "cos_gap": (1.0 - cos).numpy(),
        "distance": torch.linalg.vector_norm(x - center, dim=1).numpy(),
    }


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)``; 0 where the round has no spread."""
    median = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - median))
    if mad <= 1e-12 * max(1.0, abs(median)):
        return np.zeros_like(values)
    z: np.ndarray = (values - median) / mad
    return z


class SuspicionDetector:
    """Per-node suspicion: the mean of its last ``window`` round scores."""

    def __init__(self, *, window: int = 5, features: Sequence[str] = FEATURES) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        unknown = sorted(set(features) - set(FEATURES))
        if unknown or not features:
            raise ValueError(f"features must be some of {FEATURES}, got {list(features)}")
        self.window, self.features = int(window), tuple(features)
        self.scores: dict[int, list[float]] = {}

    def update(self, node_ids: Sequence[int], updates: torch.Tensor) -> dict[int, float]:
        """The smoothed suspicion, this round, of every node in it (needs >= 3 rows to score)."""
        if updates.shape[0] != len(node_ids):
            raise ValueError(f"{len(node_ids)} node ids for {updates.shape[0]} updates")
        if len(node_ids) < 3:
            return {n: self.score(n) for n in node_ids}
        feats = round_features(updates)
        z = np.max(np.stack([robust_z(feats[f]) for f in self.features]), axis=0)
        for node, value in zip(node_ids, np.maximum(z, 0.0), strict=True):
            self.scores[node] = [*self.scores.get(node, []), float(value)][-self.window :]
        return {n: self.score(n) for n in node_ids}

    def rounds(self, node: int) -> int:
        """How many rounds (up to the window) the node's suspicion averages."""
        return len(self.scores.get(node, []))

    def score(self, node: int) -> float:
        """The node's current suspicion (0 before it took part)."""
        past = self.scores.get(node)
        return float(np.mean(past)) if past else 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "scores": {str(k): v for k, v in self.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = {
            int(k): [float(x) for x in v][-self.window :] for k, v in dict(state["scores"]).items()
        }
