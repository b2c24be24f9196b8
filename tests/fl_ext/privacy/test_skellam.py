"""Distributed Skellam: the RDP bound, epsilon, calibration, sampling, and the ledger with it."""

import itertools
import json
import math

import numpy as np
import pytest

from fl_ext.privacy import BudgetExceeded, GaussianSteps, PrivacyLedger, compute_epsilon
from fl_ext.privacy.accountants import composed_by, merged_history
from fl_ext.privacy.skellam import (
    RDP_ORDERS,
    SkellamSteps,
    sample_skellam,
    sensitivities,
    skellam_epsilon,
    skellam_mu_for_epsilon,
    skellam_rdp,
)

DELTA = 1e-5


def _reference_rdp(l1_sens, l2_sens, central_var, scale, order):
    """google-research/federated distributed_dp/accounting_utils.py::_skellam_rdp, re-typed."""
    a, s, mu = order, scale, central_var
    rdp = a / (2 * mu) * l2_sens**2
    rdp += min(
        ((2 * a - 1) * s * l2_sens**2 + 6 * l1_sens) / (4 * s**3 * mu**2),
        3 * l1_sens / (2 * s * mu),
    )
    return rdp


@pytest.mark.parametrize(
    ("mu", "l1", "l2"), [(10.0, 5.0, 2.0), (1e3, 400.0, 30.0), (2e5, 1e4, 300.0), (3.0, 1.0, 1.0)]
)
@pytest.mark.parametrize("scale", [1.0, 7.0, 0.25])
def test_bound_matches_the_reference_at_integer_orders(mu, l1, l2, scale):
    orders = [2, 3, 5, 17, 64, 256]
    got = skellam_rdp(orders, mu=mu, l1=l1, l2=l2)
    # The reference works in unscaled units with the variance of the sum: D = s * sens, V = 2 mu.
    want = [_reference_rdp(l1 / scale, l2 / scale, 2 * mu / scale**2, scale, a) for a in orders]
    np.testing.assert_allclose(got, want, rtol=1e-12)
    by_hand = [
        a * l2**2 / (4 * mu) + min(((2 * a - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))
        for a in orders
    ]
    np.testing.assert_allclose(got, by_hand, rtol=1e-12)


def test_fractional_orders_use_the_chord_between_integer_orders():
    mu, l1, l2 = 50.0, 40.0, 6.0
    got = skellam_rdp([1.5, 2.5, 9.3], mu=mu, l1=l1, l2=l2)
    b = {a: skellam_rdp([a], mu=mu, l1=l1, l2=l2)[0] for a in (2, 3, 9, 10)}
    assert got[0] == pytest.approx(b[2])  # (1, 2): the bound at 0 for alpha = 1 and at 2
    assert got[1] == pytest.approx((0.5 * 1 * b[2] + 0.5 * 2 * b[3]) / 1.5)
    assert got[2] == pytest.approx((0.7 * 8 * b[9] + 0.3 * 9 * b[10]) / 8.3)
    assert b[2] <= got[1] <= b[3] and b[9] <= got[2] <= b[10]


def test_large_mu_is_the_gaussian_mechanism():
    mu, l2, l1 = 1e6, 1000.0, 1e5
    orders = [2, 3, 8, 32, 63, 128, 256]
    gaussian = np.array(orders) * l2**2 / (2 * (2 * mu))
    np.testing.assert_allclose(skellam_rdp(orders, mu=mu, l1=l1, l2=l2), gaussian, rtol=1e-2)
    assert np.all(skellam_rdp(orders, mu=mu, l1=l1, l2=l2) >= gaussian)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"orders": [1.0, 2.0], "mu": 1.0, "l1": 1.0, "l2": 1.0}, "orders must be"),
        ({"orders": [0.5], "mu": 1.0, "l1": 1.0, "l2": 1.0}, "orders must be"),
        ({"orders": [2], "mu": 0.0, "l1": 1.0, "l2": 1.0}, "mu must be finite and > 0"),
        ({"orders": [2], "mu": math.inf, "l1": 1.0, "l2": 1.0}, "mu must be finite"),
        ({"orders": [2], "mu": 1.0, "l1": -1.0, "l2": 1.0}, "l1 must be finite and >= 0"),
        ({"orders": [2], "mu": 1.0, "l1": 1.0, "l2": -0.1}, "l2 must be finite and >= 0"),
    ],
)
def test_bound_rejects_bad_arguments(kwargs, match):
    orders = kwargs.pop("orders")
    with pytest.raises(ValueError, match=match):
        skellam_rdp(orders, **kwargs)


def test_order_grid_extends_opacus_default():
    from opacus.accountants import RDPAccountant

    default = RDPAccountant.DEFAULT_ALPHAS
    assert list(RDP_ORDERS[: len(default)]) == pytest.approx(default)
    assert RDP_ORDERS[-1] == 256 and all(b > a for a, b in itertools.pairwise(RDP_ORDERS))


def test_epsilon_falls_with_mu_and_grows_with_rounds():
    by_mu = [skellam_epsilon([SkellamSteps(mu, 300.0, 40.0, 10)], DELTA) for mu in (1e3, 1e4, 1e5)]
    assert by_mu[0] > by_mu[1] > by_mu[2] > 0
    by_rounds = [skellam_epsilon([SkellamSteps(1e4, 300.0, 40.0, t)], DELTA) for t in (1, 10, 100)]
    assert by_rounds[0] < by_rounds[1] < by_rounds[2]
    # Composition adds RDP: two entries are one entry with the steps summed.
    two = skellam_epsilon(
        [SkellamSteps(1e4, 300.0, 40.0, 4), SkellamSteps(1e4, 300.0, 40.0, 6)], DELTA
    )
    assert two == pytest.approx(by_rounds[1])
    assert skellam_epsilon([], DELTA) == 0.0
    assert skellam_epsilon([SkellamSteps(1e4, 300.0, 40.0, 0)], DELTA) == 0.0


def test_epsilon_is_opacus_conversion_of_the_summed_rdp():
    from opacus.accountants.analysis.rdp import get_privacy_spent

    hist = [SkellamSteps(5e3, 200.0, 30.0, 7), SkellamSteps(2e4, 900.0, 60.0, 3)]
    extra = np.linspace(0.0, 0.5, len(RDP_ORDERS))
    rdp = sum(h.steps * skellam_rdp(RDP_ORDERS, mu=h.mu, l1=h.l1, l2=h.l2) for h in hist) + extra
    want, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=DELTA)
    assert skellam_epsilon(hist, DELTA, extra_rdp=extra) == pytest.approx(want)
    with pytest.raises(ValueError, match="extra_rdp must have one value per order"):
        skellam_epsilon(hist, DELTA, extra_rdp=np.zeros(3))
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
        skellam_epsilon(hist, 1.5)


@pytest.mark.parametrize(
    ("epsilon", "rounds", "l1", "l2"),
    [(1.0, 100, 1e4, 120.0), (8.0, 5, 30.0, 6.0), (0.5, 1, 2.0, 1.0)],
)
def test_mu_for_epsilon_inverts_epsilon(epsilon, rounds, l1, l2):
    mu = skellam_mu_for_epsilon(epsilon=epsilon, delta=DELTA, rounds=rounds, l1=l1, l2=l2)
    assert skellam_epsilon([SkellamSteps(mu, l1, l2, rounds)], DELTA) <= epsilon
    assert skellam_epsilon([SkellamSteps(0.99 * mu, l1, l2, rounds)], DELTA) > epsilon


def test_mu_for_epsilon_rejects_what_cannot_be_met():
    kw = {"delta": DELTA, "rounds": 10, "l1": 10.0, "l2": 3.0}
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="epsilon must be finite and > 0"):
            skellam_mu_for_epsilon(epsilon=bad, **kw)
    with pytest.raises(ValueError, match="unreachable"):
        skellam_mu_for_epsilon(epsilon=1e-3, **kw)
    with pytest.raises(ValueError, match="rounds must be an integer >= 1"):
        skellam_mu_for_epsilon(epsilon=1.0, **{**kw, "rounds": 0})
    with pytest.raises(ValueError, match="both 0"):
        skellam_mu_for_epsilon(epsilon=1.0, **{**kw, "l1": 0.0, "l2": 0.0})


def test_samples_have_mean_zero_and_variance_two_mu():
    mu, n = 37.5, 1_000_000
    x = sample_skellam(mu, n, np.random.default_rng(20211011))
    assert x.dtype == np.int64 and x.shape == (n,)
    assert abs(x.mean()) < 5 * math.sqrt(2 * mu / n)
    assert x.var() == pytest.approx(2 * mu, rel=0.03)
    # Closed under summation: ten shares of mu / 10 are one Skellam(mu).
    rng = np.random.default_rng(7)
    summed = sum(sample_skellam(mu / 10, n, rng) for _ in range(10))
    assert summed.var() == pytest.approx(2 * mu, rel=0.03)
    assert not sample_skellam(0.0, 5, rng).any()
    with pytest.raises(ValueError, match="mu must be finite and >= 0"):
        sample_skellam(-1.0, 5, rng)
    with pytest.raises(ValueError, match="size must be an integer >= 0"):
        sample_skellam(1.0, -5, rng)


def test_sensitivities_are_the_deterministic_rounding_bounds():
    s = sensitivities(l2_clip=1.0, scale=100.0, dim=10_000)
    assert s.l2 == pytest.approx(100 + 100)
    assert s.l1 == pytest.approx(100 * 100 + 10_000) == math.sqrt(10_000) * s.l2
    l2, l1 = sensitivities(l2_clip=2.0, scale=3.0, dim=10_000, weight=4)
    assert l2 == pytest.approx(4 * (6 + 100)) and l1 == pytest.approx(4 * (600 + 10_000))
    assert l1 <= l2**2  # the integer-vector bound ||v||_1 <= ||v||_2^2 is never tighter here
    for kwargs, match in (
        ({"l2_clip": -1.0, "scale": 1.0, "dim": 3}, "l2_clip"),
        ({"l2_clip": 1.0, "scale": 0.0, "dim": 3}, "scale must be finite and > 0"),
        ({"l2_clip": 1.0, "scale": 1.0, "dim": 0}, "dim must be an integer >= 1"),
        ({"l2_clip": 1.0, "scale": 1.0, "dim": 3, "weight": 0}, "weight must be an integer >= 1"),
    ):
        with pytest.raises(ValueError, match=match):
            sensitivities(**kwargs)


def test_steps_entry_validates_and_round_trips():
    e = SkellamSteps(1e4, 300.0, 40.0, 3)
    assert SkellamSteps.from_list(json.loads(json.dumps(e.as_list()))) == e
    assert SkellamSteps.from_list([1e4, 300, 40, 3.0]) == e
    assert e.with_steps(9) == SkellamSteps(1e4, 300.0, 40.0, 9)
    assert GaussianSteps(1.0, 0.1, 2).with_steps(5) == GaussianSteps(1.0, 0.1, 5)
    for bad, match in (
        ([1.0, 2.0, 3.0], r"\[mu, l1, l2, steps\]"),
        ([0.0, 1.0, 1.0, 1], "mu must be finite and > 0"),
        ([1.0, 1.0, 1.0, 1.5], "steps must be an integer >= 0"),
        ([1.0, "x", 1.0, 1], "l1 must be a number"),
    ):
        with pytest.raises(ValueError, match=match):
            SkellamSteps.from_list(bad)
    merged = merged_history([e, e, GaussianSteps(1.0, 0.1, 1), e.with_steps(0), e])
    assert merged == (e.with_steps(6), GaussianSteps(1.0, 0.1, 1), e)


@pytest.mark.parametrize("accountant", ["rdp", "prv", "pld"])
def test_mixed_history_is_composed_by_rdp(accountant):
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    gauss, skel = GaussianSteps(1.1, 0.05, 20), SkellamSteps(2e4, 900.0, 60.0, 3)
    rdp = np.asarray(compute_rdp(q=0.05, noise_multiplier=1.1, steps=20, orders=list(RDP_ORDERS)))
    rdp = rdp + 3 * skellam_rdp(RDP_ORDERS, mu=2e4, l1=900.0, l2=60.0)
    want, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=rdp, delta=DELTA)
    assert compute_epsilon([gauss, skel], DELTA, accountant) == pytest.approx(want)
    assert composed_by([gauss, skel], accountant) == "rdp"
    # Without a (non-empty) Skellam entry nothing changes.
    plain = compute_epsilon([gauss], DELTA, accountant)
    assert compute_epsilon([gauss, skel.with_steps(0)], DELTA, accountant) == plain
    assert composed_by([gauss, skel.with_steps(0)], accountant) == accountant
    assert compute_epsilon([gauss, GaussianSteps(0.0, 1.0, 1), skel], DELTA, accountant) == math.inf


# Written by the ledger before Skellam entries existed (Gaussian only); it must still load.
OLD_LEDGER = {
    "format": "fl-ext-privacy-ledger/1",
    "accountant": "rdp",
    "delta": 1e-05,
    "target_epsilon": 10.0,
    "client_target_epsilon": None,
    "client_level": [[1.0, 0.1, 1], [1.0, 0.1, 1]],
    "sample_level": {"0": [[1.1, 0.05, 20]]},
    "rounds": [
        {
            "round": 1,
            "mechanism": "client_level_gaussian",
            "accountant": "rdp",
            "delta": 1e-05,
            "client_level": [1.0, 0.1, 1],
            "client_level_epsilon": 2.133005995430793,
            "sample_level": {"0": [1.1, 0.05, 20]},
            "sample_level_epsilon": {"0": 1.9981689592900622},
            "sample_level_epsilon_max": 1.9981689592900622,
            "dp_clip": 1.0,
        },
        {
            "round": 2,
            "mechanism": "client_level_gaussian",
            "accountant": "rdp",
            "delta": 1e-05,
            "client_level": [1.0, 0.1, 1],
            "client_level_epsilon": 2.412889750604902,
            "sample_level": {},
            "sample_level_epsilon": {},
            "sample_level_epsilon_max": 1.9981689592900622,
        },
    ],
}


def test_old_gaussian_ledger_still_loads_and_goes_on(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text(json.dumps(OLD_LEDGER))
    ledger = PrivacyLedger.open(path, accountant="rdp", delta=1e-5, target_epsilon=10.0)
    assert ledger.client_level == [GaussianSteps(1.0, 0.1, 1)] * 2
    assert ledger.client_level_epsilon() == pytest.approx(2.412889750604902)
    assert ledger.sample_level_epsilon("0") == pytest.approx(1.9981689592900622)
    assert ledger.to_json() == {**OLD_LEDGER, "target_epsilon": 10.0}  # same format written back
    rec = ledger.record_round(
        3, mechanism="client_level_gaussian", client_level=GaussianSteps(1.0, 0.1, 1)
    )
    assert "composed_by" not in rec
    skel = SkellamSteps(5e4, 2e3, 100.0, 1)
    rec = ledger.record_round(4, mechanism="distributed_skellam", client_level=skel)
    want = compute_epsilon([GaussianSteps(1.0, 0.1, 3), skel], 1e-5, "rdp")
    assert rec["client_level_epsilon"] == pytest.approx(want)
    assert rec["composed_by"] == "rdp" and rec["client_level"] == {"skellam": skel.as_list()}


def test_mixed_ledger_round_trips_through_json(tmp_path):
    def open_it():
        return PrivacyLedger.open(tmp_path / "l.json", accountant="pld", delta=1e-5)

    ledger = open_it()
    skel = SkellamSteps(3e4, 1.5e3, 80.0, 1)
    rec = ledger.record_round(
        1, mechanism="client_level_gaussian", client_level=GaussianSteps(1.0, 1.0, 1)
    )
    assert "composed_by" not in rec and rec["accountant"] == "pld"
    rec = ledger.record_round(2, mechanism="distributed_skellam", client_level=skel)
    assert rec["accountant"] == "pld" and rec["composed_by"] == "rdp"
    ledger.record_round(3, mechanism="distributed_skellam", client_level=skel, details={"bits": 20})
    on_disk = json.loads((tmp_path / "l.json").read_text())
    assert on_disk["client_level"] == [
        [1.0, 1.0, 1],
        {"skellam": skel.as_list()},
        {"skellam": skel.as_list()},
    ]
    again = open_it()
    assert again.accountant == "pld"
    assert again.client_level == ledger.client_level
    assert again.client_level_epsilon() == pytest.approx(ledger.client_level_epsilon())
    assert again.to_json() == ledger.to_json()
    assert again.rounds[-1]["composed_by"] == "rdp" and again.rounds[-1]["bits"] == 20


def test_malformed_tagged_entry_is_refused(tmp_path):
    path = tmp_path / "l.json"
    bad = {**OLD_LEDGER, "client_level": [{"laplace": [1.0, 1.0, 1]}]}
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="malformed"):
        PrivacyLedger.open(path, accountant="rdp", delta=1e-5)
    path.write_text(json.dumps({**OLD_LEDGER, "client_level": [{"skellam": [1.0, 1.0]}]}))
    with pytest.raises(ValueError, match="malformed"):
        PrivacyLedger.open(path, accountant="rdp", delta=1e-5)


def test_rounds_that_fit_a_skellam_entry(tmp_path):
    skel = SkellamSteps(2e4, 1e3, 60.0, 2)  # two rounds per entry
    budget = skellam_epsilon([skel.with_steps(8)], 1e-5) + 1e-9
    ledger = PrivacyLedger.open(
        tmp_path / "l.json", accountant="prv", delta=1e-5, target_epsilon=budget
    )
    assert ledger.rounds_that_fit(skel, 100) == 4
    assert ledger.rounds_that_fit(skel, 3) == 3
    for r in range(1, 5):
        ledger.record_round(r, mechanism="distributed_skellam", client_level=skel)
    assert ledger.rounds_that_fit(skel, 100) == 0
    before = ledger.to_json()
    with pytest.raises(BudgetExceeded, match="round 5"):
        ledger.record_round(5, mechanism="distributed_skellam", client_level=skel)
    assert ledger.to_json() == before
    assert ledger.client_level_epsilon() <= budget


def test_sample_level_entries_stay_gaussian(tmp_path):
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    with pytest.raises(ValueError, match="must be GaussianSteps"):
        ledger.record_round(1, mechanism="x", sample_level={"0": SkellamSteps(1.0, 1.0, 1.0, 1)})
    assert ledger.rounds == []
