"""Differential privacy under secure aggregation: distributed (clients' Skellam) or central.

:class:`DistributedDP` (``secagg.dp.mode=distributed``, the default):

The server never holds an unnoised sum: each surviving client adds Skellam(mu_c) integer noise
to its clipped, quantized update, and Skellam is closed under summation, so the unmasked sum
carries exactly Skellam(survivors * mu_c) (Agarwal et al. 2021; Kairouz et al. 2021 use the
discrete Gaussian, whose sum is only close to one). Dropouts remove their noise with their
input: ``mu_c`` is planned so that the fewest survivors a round may unmask (``min_survivors``)
already carry the noise the budget needs, and the ledger records what each round actually
carried (survivors * mu_c, never less than planned). Accounted by RDP (the Skellam bound), one
fixed cohort per round, no sampling amplification claimed. Clients are trusted to add their
share (semi-honest); the sensitivities are deterministic bounds after L2 clipping and
stochastic rounding (:func:`fl_ext.privacy.skellam.sensitivities`).

:class:`CentralDP` (``mode=central``, the simpler one): clients only clip in L2; the server adds
Gaussian noise to the unmasked sum (DP-FedAvg's mechanism on a sum it never saw the parts of),
so it must be trusted with the noiseless sum for a moment. Accounted as one Gaussian step per
round at sampling rate 1 (a fixed cohort), calibrated for ``num_rounds``.

Both need every weight equal (``max_weight=1``): the weight coordinate of the sum is not noised.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from fl_ext.privacy.accountants import GaussianSteps, HistoryEntry
from fl_ext.privacy.calibration import calibrate_noise_multiplier
from fl_ext.privacy.ledger import PrivacyLedger
from fl_ext.privacy.skellam import SkellamSteps, sensitivities, skellam_mu_for_epsilon

TAIL_SIGMAS = 14  # noise bound in standard deviations, for the modulus: P(exceed) < 1e-40


class DistributedDP:
    """Plan, per-client noise, and the ledger of secure aggregation's distributed DP."""

    mode = "distributed"
    mechanism = "secagg_skellam"

    def __init__(
        self, *, epsilon: float, delta: float, l2_clip: float, ledger: PrivacyLedger
    ) -> None:
        for name, value in (("epsilon", epsilon), ("l2_clip", l2_clip)):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"secagg.dp.{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(delta, int | float) and 0 < delta < 1):
            raise ValueError(f"secagg.dp.delta must be in (0, 1), got {delta!r}")
        self.epsilon, self.delta, self.l2_clip = float(epsilon), float(delta), float(l2_clip)
        self.ledger = ledger
        self.mu_client = 0.0
        self.l1 = self.l2 = 0.0

    def plan(
        self, *, num_rounds: int, size: int, scale: float, max_weight: int, min_survivors: int
    ) -> None:
        """Per-client noise so that ``min_survivors`` clients spend at most epsilon in the run."""
        sens = sensitivities(l2_clip=self.l2_clip, scale=scale, dim=size, weight=max_weight)
        self.l1, self.l2 = float(sens.l1), float(sens.l2)
        mu = skellam_mu_for_epsilon(
            epsilon=self.epsilon, delta=self.delta, rounds=num_rounds, l1=self.l1, l2=self.l2
        )
        self.mu_client = mu / min_survivors

    def noise_bound(self, max_clients: int) -> int:
        """|noise| of a sum of ``max_clients`` shares, per coordinate, for the modulus."""
        return math.ceil(TAIL_SIGMAS * math.sqrt(2 * self.mu_client * max_clients)) + 1

    def entry(self, survivors: int) -> HistoryEntry:
        return SkellamSteps(mu=survivors * self.mu_client, l1=self.l1, l2=self.l2, steps=1)

    def stop_reason(self, survivors: int) -> str | None:
        """Why another round would exceed the budget, or None."""
        if self.ledger.client_level_fits(self.entry(survivors)):
            return None
        return (
            f"{self.mode} DP budget: a round of {survivors} survivors would take epsilon to "
            f"{self.ledger.client_level_epsilon(self.entry(survivors)):.4g} > {self.epsilon}"
        )

    def record(self, server_round: int, survivors: int) -> dict[str, Any]:
        """The round's spend: the noise its survivors actually carried."""
        return self.ledger.record_round(
            server_round,
            mechanism=self.mechanism,
            client_level=self.entry(survivors),
            details={"survivors": survivors, "mu_client": self.mu_client},
        )

    def config(self) -> dict[str, float]:
        return {"secagg-dp-mu": self.mu_client, "secagg-dp-l2-clip": self.l2_clip}

    def finish(self, mean: np.ndarray, weight: int) -> np.ndarray:
        """The noise is already in the sum."""
        return mean

    def describe(self) -> str:
        return f"distributed DP (Skellam), mu per client {self.mu_client:.4g}"


class CentralDP(DistributedDP):
    """Gaussian noise on the unmasked sum, added by the server (see the module docstring)."""

    mode = "central"
    mechanism = "secagg_central_gaussian"

    def __init__(
        self, *, epsilon: float, delta: float, l2_clip: float, ledger: PrivacyLedger
    ) -> None:
        super().__init__(epsilon=epsilon, delta=delta, l2_clip=l2_clip, ledger=ledger)
        self.sigma = 0.0
        self.sensitivity = 0.0
        self.rng = np.random.default_rng(secrets.randbits(128))

    def plan(
        self, *, num_rounds: int, size: int, scale: float, max_weight: int, min_survivors: int
    ) -> None:
        """Noise multiplier for ``num_rounds`` fixed-cohort rounds; the sum's L2 sensitivity."""
        # one client moves the sum by its clipped update plus its rounding (< 1 step a coordinate)
        self.sensitivity = max_weight * (self.l2_clip + math.sqrt(size) / scale)
        self.sigma = calibrate_noise_multiplier(
            target_epsilon=self.epsilon, delta=self.delta, sample_rate=1.0, steps=num_rounds,
            accountant=self.ledger.accountant, spent=tuple(self.ledger.client_level),
        )  # fmt: skip

    def noise_bound(self, max_clients: int) -> int:
        return 0  # the noise is added after unmasking, in floats

    def entry(self, survivors: int) -> HistoryEntry:
        return GaussianSteps(self.sigma, 1.0, 1)

    def config(self) -> dict[str, float]:
        return {"secagg-dp-l2-clip": self.l2_clip}

    def finish(self, mean: np.ndarray, weight: int) -> np.ndarray:
        """``(sum + N(0, (sigma * sensitivity)^2)) / weight``."""
        noise = self.rng.normal(0.0, self.sigma * self.sensitivity, size=mean.shape)
        return (mean.astype(np.float64) + noise / weight).astype(np.float32)

    def describe(self) -> str:
        return f"central DP (Gaussian on the sum), noise multiplier {self.sigma:.4g}"
