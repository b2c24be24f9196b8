"""Rounds that still fit a sample-level budget, and client-level noise vs the update's scale."""

import math

import pytest

from fl_ext.privacy import AdaptiveClipping, GaussianSteps, PrivacyLedger, compute_epsilon
from fl_ext.privacy.client_level import noise_to_signal


def test_sample_level_rounds_that_fit_counts_against_the_float64_accountant():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, client_target_epsilon=3.0)
    entry = GaussianSteps(1.0, 1 / 21, 21)
    ledger.sample_level["0"] = [entry]
    want = 0
    while compute_epsilon([entry] * (want + 2), 1e-5, "rdp") <= 3.0:
        want += 1
    assert ledger.sample_level_rounds_that_fit("0", entry, 10) == want == 1
    assert ledger.sample_level_rounds_that_fit("new", entry, 10) == want + 1
    assert ledger.sample_level_rounds_that_fit("0", entry, 0) == 0
    unbounded = PrivacyLedger(accountant="rdp", delta=1e-5)
    assert unbounded.sample_level_rounds_that_fit("0", entry, 7) == 7


def test_noise_to_signal_is_sigma_c_over_qn_against_c_over_sqrt_d():
    noise, scale = noise_to_signal(
        noise_multiplier=0.987, clip=1.0, expected_clients=3, dim=106_000
    )
    assert noise == pytest.approx(0.987 / 3)
    assert scale == pytest.approx(1 / math.sqrt(106_000))
    assert noise / scale == pytest.approx(0.987 * math.sqrt(106_000) / 3)  # ~107x


def test_noise_to_signal_uses_the_update_share_of_sigma_with_adaptive_clipping():
    adaptive = AdaptiveClipping(count_noise_multiplier=10.0)
    noise, _ = noise_to_signal(
        noise_multiplier=1.0, clip=0.5, expected_clients=30, dim=100, adaptive=adaptive
    )
    assert noise == pytest.approx(adaptive.update_noise_multiplier(1.0) * 0.5 / 30)
    assert noise > 1.0 * 0.5 / 30


@pytest.mark.parametrize("kwargs", [{"expected_clients": 0}, {"dim": 0}, {"clip": 0.0}])
def test_noise_to_signal_rejects_impossible_inputs(kwargs):
    args = {"noise_multiplier": 1.0, "clip": 1.0, "expected_clients": 3, "dim": 10, **kwargs}
    with pytest.raises(ValueError, match="need expected_clients > 0"):
        noise_to_signal(**args)
