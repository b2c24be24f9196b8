"""Attacks a Byzantine client runs itself: on its data, or by sending a malformed update."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CLIENT_ROLES = ("label_flip", "nan_update", "inf_update", "oversized", "wrong_shape")
ROLE_KEY = "attack-role"  # train-config key telling a simulated Byzantine client its role


def flip_labels(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``y -> num_classes - 1 - y`` (a copy), the usual label-flipping attack."""
    return (num_classes - 1 - labels).astype(labels.dtype)


def malform(arrays: Sequence[np.ndarray], role: str, scale: float = 1e6) -> list[np.ndarray]:
    """A malformed version of ``arrays`` (copies): NaN, Inf, scaled up, or a wrong shape."""
    out = [np.array(a, copy=True) for a in arrays]
    if role == "nan_update":
        out[0].flat[0] = np.nan
    elif role == "inf_update":
        out[-1].flat[-1] = np.inf
    elif role == "oversized":
        out = [a * scale for a in out]
    elif role == "wrong_shape":
        out[0] = out[0].reshape(-1)[:-1].copy()
    else:
        allowed = ", ".join(CLIENT_ROLES[1:])
        raise ValueError(f"unknown malformed role {role!r}; allowed: {allowed}")
    return out
