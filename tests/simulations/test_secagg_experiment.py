"""Secure aggregation in a whole experiment (config -> build -> rounds) on the in-process grid."""

import json

import numpy as np
import pytest
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

from fl_ext.tracking.paths import fl_ext_home
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["model=mlp", "num_rounds=5", "fraction_evaluate=0", "tracking=none", "local_epochs=1"]
DROPOUT = ["dropout.fraction=0.3", "dropout.phase=train"]  # 3 of 10 drop after the shares


def final_accuracy(overrides):
    built = build(compose_experiment(BASE + overrides))
    run(InProcessGrid(client_app, 10), built, flwr_run_id=1)
    return built.history[max(built.history)], built


def test_secagg_with_30_percent_dropouts_matches_plain_fedavg_with_the_same_dropouts():
    plain, _ = final_accuracy(DROPOUT)
    secure, built = final_accuracy([*DROPOUT, "secagg=secagg_plus"])
    assert plain > 0.8
    assert abs(secure - plain) <= 0.01
    assert built.strategy.secure_aggregation.rounds_abandoned == 0


def test_distributed_dp_ledger_matches_an_independent_rdp_computation():
    dp = "secagg.dp={epsilon:8,delta:1e-5,l2_clip:0.5}"
    _, built = final_accuracy([*DROPOUT, "secagg=secagg_full", dp, "num_rounds=2"])
    ledger_file = fl_ext_home() / "privacy" / "default" / "ledger.json"
    saved = json.loads(ledger_file.read_text())
    dpp = built.strategy.secure_aggregation.dp
    entries = saved["client_level"]
    assert [e["skellam"][0] for e in entries] == pytest.approx([7 * dpp.mu_client] * 2)
    # the Skellam RDP bound (Agarwal et al. 2021, Thm. 3.5) typed here from the paper
    mu, l1, l2 = 7 * dpp.mu_client, dpp.l1, dpp.l2
    orders = np.arange(2, 257)
    per_round = orders * l2**2 / (4 * mu) + np.minimum(
        ((2 * orders - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu)
    )
    eps, _ = compute_epsilon(orders, 2 * per_round, 1e-5)
    recorded = saved["rounds"][-1]["client_level_epsilon"]
    assert recorded == pytest.approx(eps, rel=0.05)
    assert recorded <= 8.0  # planned for the fewest survivors: 7 survivors spend less


def test_central_dp_on_the_unmasked_sum_spends_what_was_calibrated():
    dp = "secagg.dp={mode:central,epsilon:8,delta:1e-5,l2_clip:0.5}"
    _, built = final_accuracy([*DROPOUT, "secagg=secagg_plus", dp, "num_rounds=2"])
    ledger = json.loads((fl_ext_home() / "privacy" / "default" / "ledger.json").read_text())
    sigma = built.strategy.secure_aggregation.dp.sigma
    assert ledger["client_level"] == [[sigma, 1.0, 1], [sigma, 1.0, 1]]
    assert ledger["rounds"][-1]["mechanism"] == "secagg_central_gaussian"
    # calibrated for num_rounds: the budget is spent exactly (to the bisection's tolerance)
    assert 7.9 <= ledger["rounds"][-1]["client_level_epsilon"] <= 8.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["aggregator=median"], "cannot be combined with"),
        (["codec=int8"], "both take the decoder slot"),
        (["attack=ipm", "attack.num_byzantine=2"], "individual_updates"),
        (["privacy=client_level"], "both add noise"),
        (["secagg.bits=8"], "could wrap"),
        (["secagg.max_weight=4", "secagg.dp={epsilon:8,l2_clip:1.0}"], "needs max_weight=1"),
        (["secagg.dp={mode:local,epsilon:8,l2_clip:1.0}"], "secagg.dp.mode must be one of"),
        (["dropout.fraction=0.3", "dropout.phase=keys", "secagg=none"], "needs secure aggregation"),
    ],
)
def test_impossible_combinations_fail_at_start_with_a_message(overrides, message):
    secagg = [] if any(o.startswith("secagg=") for o in overrides) else ["secagg=secagg_plus"]
    with pytest.raises((ConfigError, ValueError), match=message):
        built = build(compose_experiment(BASE + secagg + overrides))
        built.strategy.check_federation(10)
