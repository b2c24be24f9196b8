"""Per-channel normalisation with figures no single client has: the federation's statistics.

A :class:`Normalization` travels to clients as JSON in the train/evaluate config, is applied
to every client's data and to the server's held-out split, and is stored with the registered
model (:class:`fl_ext.models.normalized.Normalized`) so that serving takes raw inputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fl_ext.data.datasets import ArrayDataset

NORMALIZE_KEY = "normalize"  # the config entry clients read the figures from
MIN_STD = 1e-6  # a constant channel is centred only (dividing by ~0 would blow it up)


@dataclass(frozen=True)
class Normalization:
    """``(x - mean[c]) / std[c]`` per channel ``c`` of ``[N, C, H, W]`` images."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.mean or len(self.mean) != len(self.std):
            raise ValueError(
                f"normalization needs one mean and one std per channel, got {len(self.mean)} "
                f"means and {len(self.std)} stds"
            )
        values = [*self.mean, *self.std]
        if not all(isinstance(v, float) and math.isfinite(v) for v in values):
            raise ValueError(f"normalization figures must be finite floats, got {values}")
        if min(self.std) <= 0:
            raise ValueError(f"normalization stds must be > 0, got {list(self.std)}")

    @classmethod
    def of(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """From per-channel figures; a std below :data:`MIN_STD` becomes 1 (centre only)."""
        return cls(
            tuple(float(m) for m in mean),
            tuple(float(s) if s >= MIN_STD else 1.0 for s in std),
        )

    def apply(self, data: ArrayDataset) -> ArrayDataset:
        """A normalised float32 copy of ``data`` (labels unchanged)."""
        x = data.x
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise ValueError(
                f"normalization for {len(self.mean)} channel(s) cannot apply to images of "
                f"shape {tuple(x.shape[1:])}"
            )
        mean = np.asarray(self.mean, dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(1, -1, 1, 1)
        return ArrayDataset(((x - mean) / std).astype(np.float32), data.y)

    def to_json(self) -> str:
        """The config value clients receive."""
        return json.dumps({"mean": list(self.mean), "std": list(self.std)})

    @classmethod
    def from_json(cls, text: str) -> Normalization:
        """Parse a config value; ValueError naming what is wrong."""
        try:
            data = json.loads(text)
            return cls(tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"]))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"normalize must be JSON {{mean: [...], std: [...]}}: {err}") from err
