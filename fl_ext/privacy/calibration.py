"""Noise multiplier for a target epsilon over a planned number of steps (bisection)."""

from __future__ import annotations

import math

from fl_ext.privacy.accountants import (
    GaussianSteps,
    HistoryEntry,
    check_accountant,
    check_delta,
    compute_epsilon,
)

MAX_NOISE_MULTIPLIER = 100.0


class UnreachableBudget(ValueError):
    """The target epsilon cannot be met with the plan (names the best reachable epsilon)."""


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str,
    spent: tuple[HistoryEntry, ...] = (),
    max_noise_multiplier: float = MAX_NOISE_MULTIPLIER,
    rel_tol: float = 1e-3,
) -> float:
    """Smallest sigma (to ``rel_tol``) keeping ``spent`` + ``steps`` at (q, sigma) <= target.

    The result is on the safe side: the epsilon it gives is <= ``target_epsilon``.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ValueError(f"target epsilon must be > 0, got {target_epsilon}")
    check_delta(delta)
    check_accountant(accountant)

    def eps(sigma: float) -> float:
        return compute_epsilon(
            (*spent, GaussianSteps(sigma, sample_rate, steps)), delta, accountant
        )

    best = eps(max_noise_multiplier)
    if best > target_epsilon:
        raise UnreachableBudget(
            f"target epsilon {target_epsilon} is unreachable: {steps} steps at sample rate "
            f"{sample_rate:g} spend at least epsilon {best:.4g} even with noise multiplier "
            f"{max_noise_multiplier:g} (delta {delta:g}); plan fewer rounds or steps, a lower "
            "sample rate, or a larger budget"
        )
    low, high = 0.0, max_noise_multiplier
    while eps(high / 2) <= target_epsilon and high / 2 > 1e-3:  # bring the bracket down fast
        high /= 2
    low = high / 2
    while high - low > rel_tol * high:
        mid = (low + high) / 2
        if eps(mid) <= target_epsilon:
            high = mid
        else:
            low = mid
    return high
