"""The Gaussian mechanism on merged moments: differentially private dataset statistics.

Released: per channel the example count, the sum of ``x - mid`` and the sum of
``(x - mid)^2``, where every value is clipped to ``[lo, hi]`` and ``mid`` is the range's
centre. One example (``pixels`` values per channel) changes the count by 1, each centred sum
by at most ``pixels * r`` and each centred square sum by at most ``pixels * r^2``
(``r = (hi - lo) / 2``). Scaling every coordinate by its bound gives a vector whose L2
sensitivity is ``sqrt(1 + 2C)``; Gaussian noise of ``noise_multiplier * sqrt(1 + 2C)`` per
scaled coordinate is then the Gaussian mechanism with that noise multiplier, one release per
example (``GaussianSteps(noise_multiplier, 1, 1)`` in the ledger). The noisy figures are
turned back into moments; a variance the noise pushed below 0 or above ``r^2`` is clamped to
the possible range (post-processing, which costs no privacy).
"""

from __future__ import annotations

import math

import numpy as np

from fl_ext.stats.moments import Moments


class GaussianMomentsNoise:
    """Noise for the moments of values in ``value_range``, ``pixels`` values per example."""

    def __init__(
        self, *, noise_multiplier: float, value_range: tuple[float, float], pixels: int
    ) -> None:
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ValueError(f"noise_multiplier must be > 0, got {noise_multiplier}")
        lo, hi = float(value_range[0]), float(value_range[1])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"value_range must be finite with lo < hi, got {value_range}")
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
            raise ValueError(f"pixels per example must be an integer >= 1, got {pixels!r}")
        self.noise_multiplier = float(noise_multiplier)
        self.lo, self.hi, self.pixels = lo, hi, pixels

    def apply(self, exact: Moments, rng: np.random.Generator) -> Moments:
        """Noisy moments of the same data (see the module docstring)."""
        c = exact.channels
        mid, r = (self.lo + self.hi) / 2, (self.hi - self.lo) / 2
        scale = self.noise_multiplier * math.sqrt(1 + 2 * c)
        examples = exact.count[0] / self.pixels
        centred = exact.mean - mid
        s1 = exact.count * centred
        s2 = exact.m2 + exact.count * centred**2
        noisy_examples = examples + rng.normal(0.0, scale)
        noisy_s1 = s1 + rng.normal(0.0, scale * self.pixels * r, size=c)
        noisy_s2 = s2 + rng.normal(0.0, scale * self.pixels * r**2, size=c)
        n = max(float(noisy_examples), 1.0) * self.pixels
        mean_c = np.clip(noisy_s1 / n, -r, r)
        var = np.clip(noisy_s2 / n - mean_c**2, 0.0, r**2)
        count = np.full(c, round(n), dtype=np.int64)
        return Moments(count, mean_c + mid, var * count)
