"""A privacy ledger spent by earlier runs: said at start, and a run where nothing fits is refused.

Also the client-level noise-vs-update figures a run states before round 1. In-process grid,
real Opacus accounting, real MLflow (sqlite in tmp).
"""

import json
import logging

import pytest
from mlflow.tracking import MlflowClient

from fl_ext.privacy import GaussianSteps, compute_epsilon
from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["dataset=digits", "model=mlp", "fraction_evaluate=0.0", "local_epochs=1"]
CLIENT_LEVEL = [
    "privacy=client_level",
    "privacy.noise_multiplier=1.0",
    "privacy.sample_rate=0.5",
    "num_rounds=2",
]


@pytest.fixture
def caplog(caplog):
    """Records of the ``fl_ext`` logger, also once the console stopped it propagating."""
    logger = logging.getLogger("fl_ext")
    propagate, level = logger.propagate, logger.level
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate, logger.level = propagate, level


def _runs():
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _budget(rounds, sigma=1.0, q=0.5):
    return compute_epsilon([GaussianSteps(sigma, q, rounds)], 1e-5, "rdp") * 1.0001


def test_client_level_run_on_a_spent_ledger_is_refused_before_it_is_tracked(
    private_homes, tmp_path
):
    overrides = [*BASE, *CLIENT_LEVEL, f"privacy.target_epsilon={_budget(2)}"]
    run(InProcessGrid(client_app, 4), build(compose_experiment(overrides)))
    assert len(_runs()) == 1
    ledger = private_homes / "fl-ext-home/privacy/fl-ext/ledger.json"
    with pytest.raises(ConfigError) as err:
        build(compose_experiment(overrides))
    message = str(err.value)
    assert "privacy budget spent" in message and str(ledger) in message
    assert "holds 2 client-level rounds" in message
    assert "privacy.ledger_path=" in message and "tracking.experiment=" in message
    assert len(_runs()) == 1  # refused before MLflow logged a run
    assert len(json.loads(ledger.read_text())["rounds"]) == 2  # nothing spent
    # a fresh ledger, as the message says, runs
    fresh = build(compose_experiment([*overrides, f"privacy.ledger_path={tmp_path / 'new.json'}"]))
    run(InProcessGrid(client_app, 4), fresh)
    assert len(fresh.strategy.privacy.ledger.rounds) == 2


def test_client_level_calibrated_sigma_for_a_nearly_spent_ledger_is_said(private_homes, caplog):
    # the first run calibrates sigma to spend the whole budget; what is left for a second
    # run is a sliver: a huge sigma, said with the fresh-ledger figure beside it
    overrides = [
        *BASE,
        "privacy=client_level",
        "privacy.target_epsilon=5",
        "privacy.sample_rate=0.5",
        "num_rounds=2",
        "tracking=none",
    ]
    first = build(compose_experiment(overrides))
    run(InProcessGrid(client_app, 4), first)
    caplog.clear()
    second = build(compose_experiment(overrides))
    (said,) = [r.getMessage() for r in caplog.records if "carried over" in r.getMessage()]
    assert f"a fresh ledger would give sigma={first.strategy.privacy.noise_multiplier:.4g}" in said
    assert second.strategy.privacy.noise_multiplier > 10 * first.strategy.privacy.noise_multiplier


def test_earlier_spend_and_rounds_that_still_fit_are_said_at_start(private_homes, caplog):
    overrides = [*BASE, *CLIENT_LEVEL, f"privacy.target_epsilon={_budget(3)}", "tracking=none"]
    run(InProcessGrid(client_app, 4), build(compose_experiment(overrides)))
    caplog.clear()
    second = build(compose_experiment(overrides))
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "Privacy ledger carried over" in m
        and "holds 2 client-level rounds" in m
        and "1 of the 2 planned rounds still fit" in m
        for m in warned
    ), warned
    run(InProcessGrid(client_app, 4), second)
    assert len(second.strategy.privacy.ledger.rounds) == 3
    assert "round 2 would take" in second.strategy.stop_reason


def test_dp_sgd_run_where_no_client_has_budget_left_fails_before_training(private_homes, caplog):
    # sigma fixed: two rounds fit each client's budget (epsilon 2.42, 2.89), a third does not
    overrides = [
        *BASE,
        "privacy=dp_sgd",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=3.0",
        "num_rounds=2",
    ]
    run(InProcessGrid(client_app, 2), build(compose_experiment(overrides)))
    ledger = private_homes / "fl-ext-home/privacy/fl-ext/ledger.json"
    spent = json.loads(ledger.read_text())
    assert sorted(spent["sample_level"]) == ["0", "1"]
    second = build(compose_experiment(overrides))
    assert any(
        "Privacy ledger carried over" in r.getMessage()
        and "2 of 2 clients have none left" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(ConfigError) as err:
        run(InProcessGrid(client_app, 2), second)
    message = str(err.value)
    assert "privacy budget spent" in message and "none of the 2 clients" in message
    assert str(ledger) in message and "privacy.ledger_path=" in message
    assert json.loads(ledger.read_text())["rounds"] == spent["rounds"]  # nobody trained
    failed = next(r for r in _runs() if r.info.status == "FAILED")
    assert "privacy budget spent" in failed.data.tags["error"]
    assert (
        MlflowClient(resolve_tracking_uri()).get_metric_history(failed.info.run_id, "accuracy/test")
        == []
    )  # refused before the first evaluation
    # a larger federation with a calibrated sigma: fresh clients 2, 3 train, 0 and 1 decline
    caplog.clear()
    third = build(
        compose_experiment([*overrides, "privacy.noise_multiplier=null", "min_train_nodes=1"])
    )
    run(InProcessGrid(client_app, 4), third)
    assert set(third.strategy.privacy.ledger.sample_level) == {"0", "1", "2", "3"}
    assert len(third.strategy.privacy.ledger.sample_level["2"]) == 2
    assert len(third.strategy.privacy.ledger.sample_level["0"]) == 2  # nothing more spent
    assert any("2 of 4 clients have no budget left" in r.getMessage() for r in caplog.records)


def test_dp_sgd_sigma_too_small_for_one_round_fails_before_training(tmp_path):
    # no ledger history: sigma 1.0 on 4 partitions of ~320 examples exceeds epsilon 3 at once
    built = build(
        compose_experiment(
            [
                *BASE,
                "privacy=dp_sgd",
                "privacy.noise_multiplier=1.0",
                "privacy.target_epsilon=3.0",
                f"privacy.ledger_path={tmp_path / 'fresh.json'}",
                "tracking=none",
            ]
        )
    )
    with pytest.raises(ConfigError, match=r"noise_multiplier=1.0 is too small .* every client"):
        run(InProcessGrid(client_app, 4), built)
    assert not (tmp_path / "fresh.json").exists()


def test_client_level_noise_that_swamps_the_update_is_warned_with_the_numbers(caplog):
    # the README's old example in small: calibrated sigma for epsilon 8, q*N = 2 clients
    overrides = [
        *BASE,
        "privacy=client_level",
        "privacy.target_epsilon=8",
        "fraction_train=0.5",
        "num_rounds=1",
        "tracking=none",
    ]
    built = build(compose_experiment(overrides))
    run(InProcessGrid(client_app, 4), built)
    plan = built.strategy.privacy
    dim = sum(p.numel() for p in built.model.state_dict().values())
    noise = plan.noise_multiplier * plan.clip / (0.5 * 4)
    scale = plan.clip / dim**0.5
    (warning,) = [r.getMessage() for r in caplog.records if "swamps the update" in r.getMessage()]
    assert f"= {noise:.3g}" in warning and f"sqrt({dim}) = {scale:.3g}" in warning
    assert f"{noise / scale:.1f}x" in warning


def test_client_level_noise_below_the_update_scale_is_not_warned(caplog):
    overrides = [
        *BASE,
        "privacy=client_level",
        "privacy.noise_multiplier=0.01",
        "privacy.target_epsilon=null",
        "privacy.sample_rate=0.5",
        "num_rounds=1",
        "tracking=none",
    ]
    run(InProcessGrid(client_app, 8), build(compose_experiment(overrides)))
    stated = [r for r in caplog.records if "noise std per coordinate" in r.getMessage()]
    assert [r.levelno for r in stated] == [logging.INFO]
    assert "swamps" not in stated[0].getMessage()
