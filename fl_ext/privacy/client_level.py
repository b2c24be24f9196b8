"""Client-level DP at the server (DP-FedAvg, McMahan et al. 2018; adaptive clip, Andrew et al.).

Clip each update to C, sum, add Gaussian noise, divide by the expected number of participants.

With Poisson client sampling at rate ``q`` over ``N`` clients, dividing by the fixed expected
count ``qN`` (not by the realised count) keeps the sensitivity of the average at ``C / (qN)``,
so one round is the Poisson-subsampled Gaussian mechanism with noise multiplier ``sigma``.

Adaptive clipping tracks the ``target_quantile`` of update norms: each round the fraction ``b``
of updates with norm <= C is released as ``1/2 + (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / (qN)``
(centred bits, sensitivity 1/2) and
``C <- C * exp(-lr * (b - target_quantile))``: when more updates than the target fit under C,
C shrinks (Flower 1.41's adaptive wrappers move it the other way). The count query costs
privacy too: the update noise multiplier becomes ``(sigma^-2 - (2 sigma_b)^-2)^-1/2`` so that
the pair (update, count) is the Gaussian mechanism with the accounted ``sigma`` (Andrew et al.,
Theorem 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdaptiveClipping:
    """Geometric update of the clipping bound towards the ``target_quantile`` of update norms."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_multiplier: float = 10.0  # sigma_b, noise std of the count (in clients)

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise ValueError(f"target_quantile must be in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.count_noise_multiplier > 0:
            raise ValueError(
                f"count_noise_multiplier must be > 0, got {self.count_noise_multiplier}"
            )

    def update_noise_multiplier(self, sigma: float) -> float:
        """Noise multiplier left for the update once the count query took its share."""
        rest = sigma**-2 - (2 * self.count_noise_multiplier) ** -2
        if rest <= 0:
            raise ValueError(
                f"noise multiplier {sigma:g} is too large for adaptive clipping with "
                f"count_noise_multiplier {self.count_noise_multiplier:g}: the count alone "
                f"would use it all; need sigma < {2 * self.count_noise_multiplier:g} "
                "(raise count_noise_multiplier)"
            )
        return float(rest**-0.5)

    def next_clip(self, clip: float, unclipped_fraction: float) -> float:
        """``C * exp(-lr (b - gamma))``: shrinks when more than ``gamma`` fit under C."""
        return clip * math.exp(-self.learning_rate * (unclipped_fraction - self.target_quantile))


@dataclass(frozen=True)
class ClientLevelGaussian:
    """``(sum_i clip_C(x_i) + N(0, (z C)^2 I)) / expected_clients``.

    ``noise_multiplier`` is the accounted sigma; with adaptive clipping part of it pays for the
    noisy unclipped count.
    """

    noise_multiplier: float
    expected_clients: float
    adaptive: AdaptiveClipping | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ValueError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not self.expected_clients > 0:
            raise ValueError(f"expected_clients must be > 0, got {self.expected_clients}")
        if self.adaptive is not None:
            self.adaptive.update_noise_multiplier(self.noise_multiplier)  # raises if too small

    def __call__(
        self, updates: torch.Tensor, clip: float, generator: torch.Generator
    ) -> tuple[torch.Tensor, float, dict[str, float]]:
        """Noised average of clipped updates, the next clipping bound, and round figures."""
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"clipping bound must be > 0, got {clip}")
        norms = torch.linalg.vector_norm(updates.double(), dim=1)
        scale = torch.clamp(clip / norms.clamp(min=1e-300), max=1.0)
        total = (scale.unsqueeze(1) * updates.double()).sum(dim=0)
        sigma_update = (
            self.noise_multiplier
            if self.adaptive is None
            else self.adaptive.update_noise_multiplier(self.noise_multiplier)
        )
        noise = torch.randn(total.shape, generator=generator, dtype=torch.float64)
        out = (total + noise * (sigma_update * clip)) / self.expected_clients
        clipped = float((norms > clip).double().mean()) if len(norms) else 0.0
        figures = {"dp_clip": clip, "dp_clipped_fraction": clipped, "dp_participants": len(norms)}
        next_clip = clip
        if self.adaptive is not None:
            # Centred bits b_i - 1/2 have sensitivity 1/2 under adding/removing a client.
            centred = float(((norms <= clip).double() - 0.5).sum())
            count_noise = float(torch.randn((), generator=generator, dtype=torch.float64))
            noisy = 0.5 + (centred + count_noise * self.adaptive.count_noise_multiplier) / (
                self.expected_clients
            )
            next_clip = self.adaptive.next_clip(clip, noisy)
        return out.to(updates.dtype), next_clip, figures


def noise_to_signal(
    *,
    noise_multiplier: float,
    clip: float,
    expected_clients: float,
    dim: int,
    adaptive: AdaptiveClipping | None = None,
) -> tuple[float, float]:
    """Noise std per coordinate of the averaged update, and a clipped update's coordinate scale.

    The noise added to the average is ``N(0, (sigma C / qN)^2)`` in every coordinate (sigma
    the update's share with adaptive clipping); an update clipped to norm C spread over ``dim``
    coordinates has per-coordinate scale ``C / sqrt(dim)``. Their ratio
    ``sigma sqrt(dim) / qN`` is the noise norm over the largest possible averaged update norm.
    """
    if not (expected_clients > 0 and dim >= 1 and clip > 0):
        raise ValueError(
            f"need expected_clients > 0, dim >= 1, clip > 0; got {expected_clients}, {dim}, {clip}"
        )
    sigma = (
        noise_multiplier if adaptive is None else adaptive.update_noise_multiplier(noise_multiplier)
    )
    return sigma * clip / expected_clients, clip / math.sqrt(dim)
