"""Staleness weights s(tau) for asynchronous updates (Xie et al. 2019, FedAsync; FedBuff).

``tau`` is measured by the server only: the model version when the update is aggregated minus
the version the client started from (never a number the client reports). Each weight is 1 at
tau = 0 and non-increasing in tau.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KINDS = ("sqrt", "polynomial", "hinge", "constant")


@dataclass(frozen=True)
class Staleness:
    """One staleness function, chosen by ``kind``.

    ``sqrt``: 1/sqrt(1+tau) (FedBuff's default); ``polynomial``: (1+tau)^-a; ``hinge``: 1 for
    tau <= b, else 1/(a (tau - b) + 1); ``constant``: 1.
    """

    kind: str = "sqrt"
    a: float = 0.5
    b: int = 4

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"staleness kind must be one of {KINDS}, got {self.kind!r}")
        if not (math.isfinite(self.a) and self.a >= 0):
            raise ValueError(f"staleness a must be finite and >= 0, got {self.a!r}")
        if isinstance(self.b, bool) or not isinstance(self.b, int) or self.b < 0:
            raise ValueError(f"staleness b must be an integer >= 0, got {self.b!r}")

    def __call__(self, tau: int) -> float:
        if isinstance(tau, bool) or not isinstance(tau, int) or tau < 0:
            raise ValueError(f"staleness must be an integer >= 0, got {tau!r}")
        if self.kind == "sqrt":
            return 1.0 / math.sqrt(1.0 + tau)
        if self.kind == "polynomial":
            return float((1.0 + tau) ** -self.a)
        if self.kind == "hinge":
            return 1.0 if tau <= self.b else 1.0 / (self.a * (tau - self.b) + 1.0)
        return 1.0
