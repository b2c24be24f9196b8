"""Distributed DP under secure aggregation: every client adds Skellam noise before masking.

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
"""

from __future__ import annotations

import math
from typing import Any

from fl_ext.privacy.ledger import PrivacyLedger
from fl_ext.privacy.skellam import SkellamSteps, sensitivities, skellam_mu_for_epsilon

TAIL_SIGMAS = 14  # noise bound in standard deviations, for the modulus: P(exceed) < 1e-40


class DistributedDP:
    """Plan, per-client noise, and the ledger of secure aggregation's distributed DP."""

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

    def entry(self, survivors: int) -> SkellamSteps:
        return SkellamSteps(mu=survivors * self.mu_client, l1=self.l1, l2=self.l2, steps=1)

    def stop_reason(self, survivors: int) -> str | None:
        """Why another round would exceed the budget, or None."""
        if self.ledger.client_level_fits(self.entry(survivors)):
            return None
        return (
            f"distributed-DP budget: a round of {survivors} survivors would take epsilon to "
            f"{self.ledger.client_level_epsilon(self.entry(survivors)):.4g} > {self.epsilon}"
        )

    def record(self, server_round: int, survivors: int) -> dict[str, Any]:
        """The round's spend: the noise its survivors actually carried."""
        return self.ledger.record_round(
            server_round,
            mechanism="secagg_skellam",
            client_level=self.entry(survivors),
            details={"survivors": survivors, "mu_client": self.mu_client},
        )

    def config(self) -> dict[str, float]:
        return {"secagg-dp-mu": self.mu_client, "secagg-dp-l2-clip": self.l2_clip}
