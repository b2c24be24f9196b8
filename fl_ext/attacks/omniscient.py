"""Omniscient attacks from the literature, each crafted from the honest updates."""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from fl_ext.attacks.base import OmniscientAttack, repeat_row


class SignFlip(OmniscientAttack):
    """Send the negated honest mean (Allen-Zhu et al., 2020 "sign flipping")."""

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        return repeat_row(-honest.double().mean(0).to(honest.dtype), num_byzantine)


class GaussianNoise(OmniscientAttack):
    """Send independent N(0, sigma^2 I) vectors."""

    def __init__(self, *, sigma: float = 1.0) -> None:
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        self.sigma = self.factor = float(sigma)

    def with_factor(self, factor: float) -> GaussianNoise:
        return GaussianNoise(sigma=factor)

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        noise = torch.randn(
            (num_byzantine, honest.shape[1]), generator=generator, dtype=torch.float64
        )
        return (noise * self.sigma).to(honest.dtype)


class IPM(OmniscientAttack):
    """Inner-product manipulation (Xie et al., 2020): send ``-epsilon`` x the honest mean."""

    def __init__(self, *, epsilon: float = 0.1) -> None:
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        self.epsilon = self.factor = float(epsilon)

    def with_factor(self, factor: float) -> IPM:
        return IPM(epsilon=factor)

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        return repeat_row((-self.epsilon * honest.double().mean(0)).to(honest.dtype), num_byzantine)


def alie_z(n: int, f: int) -> float:
    """Baruch et al. (2019): ``z = Phi^-1((n - s) / n)`` with ``s = floor(n/2 + 1) - f``."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    p = min(max(p, 1e-9), 1 - 1e-9)
    return NormalDist().inv_cdf(p)


class ALIE(OmniscientAttack):
    """A little is enough (Baruch et al., 2019): ``mean - z * std`` per coordinate.

    ``z`` defaults to the paper's value for the federation size (``z=None``).
    """

    def __init__(self, *, z: float | None = None) -> None:
        self.factor = None if z is None else float(z)

    def with_factor(self, factor: float) -> ALIE:
        return ALIE(z=factor)

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        h = honest.double()
        z = (
            self.factor
            if self.factor is not None
            else alie_z(h.shape[0] + num_byzantine, num_byzantine)
        )
        std = h.std(dim=0, unbiased=h.shape[0] > 1) if h.shape[0] > 1 else torch.zeros_like(h[0])
        return repeat_row((h.mean(0) - z * std).to(honest.dtype), num_byzantine)


class Mimic(OmniscientAttack):
    """Every Byzantine client copies one honest client (Karimireddy et al., 2022)."""

    def __init__(self, *, target: int = 0) -> None:
        if target < 0:
            raise ValueError(f"target must be >= 0, got {target}")
        self.target = int(target)

    def craft(
        self, honest: torch.Tensor, num_byzantine: int, generator: torch.Generator | None
    ) -> torch.Tensor:
        return repeat_row(honest[min(self.target, honest.shape[0] - 1)], num_byzantine)
