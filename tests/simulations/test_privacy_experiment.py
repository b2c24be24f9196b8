"""Client-level DP and DP-SGD end to end on the in-process grid (real ClientApp, Opacus, MLflow)."""

import json

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


def _run(overrides, nodes=6):
    built = build(compose_experiment([*BASE, *overrides]))
    run(InProcessGrid(client_app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    return built, client, found


def test_client_level_dp_trains_accounts_and_logs(private_homes):
    built, client, found = _run(
        [
            "privacy=client_level",
            "privacy.noise_multiplier=0.01",  # noise std sigma*C/(qN) per coordinate: tiny
            "privacy.target_epsilon=null",
            "privacy.sample_rate=0.5",
            "privacy.clip=2.0",
            "privacy.noise_seed=0",
            "num_rounds=4",
        ],
        nodes=8,
    )
    assert built.history[4] > built.history[0] + 0.3  # learns despite the noise
    want = compute_epsilon([GaussianSteps(0.01, 0.5, 4)], 1e-5, "rdp")
    metrics = found.data.metrics
    assert metrics["dp/epsilon_client_level"] == pytest.approx(want)
    assert metrics["dp/noise_multiplier"] == 0.01 and metrics["dp/sample_rate"] == 0.5
    history = client.get_metric_history(found.info.run_id, "dp/epsilon_client_level")
    assert [m.step for m in history] == [1, 2, 3, 4]
    assert history[0].value < history[-1].value
    ledger = json.loads((private_homes / "fl-ext-home/privacy/fl-ext/ledger.json").read_text())
    assert [r["round"] for r in ledger["rounds"]] == [1, 2, 3, 4]
    version = client.get_model_version("fl-ext-digits-mlp", 1)
    assert float(version.tags["dp_epsilon_client_level"]) == pytest.approx(want, rel=1e-3)
    assert version.tags["privacy"] == "client_level"


def test_tight_budget_stops_at_the_last_round_that_fits(private_homes):
    budget = compute_epsilon([GaussianSteps(1.0, 0.5, 2)], 1e-5, "rdp") * 1.0001
    _built, client, found = _run(
        [
            "privacy=client_level",
            "privacy.noise_multiplier=1.0",
            f"privacy.target_epsilon={budget}",
            "privacy.sample_rate=0.5",
            "num_rounds=5",
        ]
    )
    history = client.get_metric_history(found.info.run_id, "dp/epsilon_client_level")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value <= budget
    assert "round 3 would take client-level epsilon" in found.data.tags["privacy.stopped"]
    assert found.info.status == "FINISHED"  # model and ledger kept


def test_dp_sgd_clients_spend_and_the_ledger_keeps_it(private_homes):
    built, _client, found = _run(
        [
            "privacy=dp_sgd",
            "privacy.target_epsilon=50",
            "privacy.max_grad_norm=1.0",
            "num_rounds=2",
            "lr=0.1",
        ],
        nodes=3,
    )
    assert built.history[2] > built.history[0] + 0.1
    ledger = json.loads((private_homes / "fl-ext-home/privacy/fl-ext/ledger.json").read_text())
    assert sorted(ledger["sample_level"]) == ["0", "1", "2"]
    eps = [
        compute_epsilon([GaussianSteps.from_list(e) for e in h], 1e-5, "rdp")
        for h in ledger["sample_level"].values()
    ]
    assert found.data.metrics["dp/epsilon_sample_level_max"] == pytest.approx(max(eps))
    assert max(eps) <= 50  # calibrated for the 2 planned rounds
    assert max(eps) > 45


def test_dp_sgd_client_declines_when_its_budget_is_spent(private_homes):
    # sigma fixed: each round spends the same; the budget holds one round and a half.
    _, _client, found = _run(
        [
            "privacy=dp_sgd",
            "privacy.noise_multiplier=1.0",
            "privacy.target_epsilon=3.0",
            "num_rounds=3",
            "min_train_nodes=1",
            "min_available_nodes=2",
        ],
        nodes=2,
    )
    stopped = found.data.tags.get("privacy.stopped", "")
    assert "every client's sample-level budget" in stopped
    assert found.data.metrics["dp/epsilon_sample_level_max"] <= 3.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["privacy=client_level", "privacy.target_epsilon=0"], "target_epsilon must be > 0"),
        (["privacy=client_level", "privacy.delta=1.5"], r"delta must be in \(0, 1\)"),
        (["privacy=client_level", "privacy.noise_multiplier=-1"], "sigma"),
        (["privacy=client_level", "privacy.clip=0"], "clip must be > 0"),
        (["privacy=dp_sgd", "privacy.max_grad_norm=0"], "max_grad_norm must be > 0"),
        (["privacy=dp_sgd", "privacy.grad_sample_mode=magic"], "grad_sample_mode 'magic'"),
        (
            ["privacy=client_level", "privacy.target_epsilon=0.01", "privacy.sample_rate=1.0"],
            r"unreachable: .* at least epsilon",
        ),
        (["privacy=client_level", "aggregator=median"], "cannot be combined with"),
        (["privacy=dp_sgd", "strategy=fedprox"], "proximal term"),
    ],
)
def test_bad_privacy_settings_fail_at_start(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment([*BASE, *overrides, "tracking=none"]))


def test_restarted_run_continues_the_ledger(private_homes):
    overrides = [
        "privacy=client_level",
        "privacy.noise_multiplier=1.0",
        "privacy.target_epsilon=null",
        "privacy.sample_rate=0.5",
        "num_rounds=2",
        "tracking=none",
    ]
    for _ in range(2):
        built = build(compose_experiment([*BASE, *overrides]))
        run(InProcessGrid(client_app, 4), built)
    ledger = built.strategy.privacy.ledger
    assert len(ledger.rounds) == 4
    want = compute_epsilon([GaussianSteps(1.0, 0.5, 4)], 1e-5, "rdp")
    assert ledger.client_level_epsilon() == pytest.approx(want)


def test_late_replies_still_count_as_spent(private_homes):
    # A deadline nobody meets: no update is used, but every client trained on its data.
    built, _, found = _run(
        [
            "privacy=dp_sgd",
            "privacy.target_epsilon=50",
            "network=mobile",
            "network.deadline_s=0.001",
            "num_rounds=1",
        ],
        nodes=8,
    )
    assert built.history[1] == built.history[0]
    ledger = built.strategy.privacy.ledger
    assert len(ledger.sample_level) == len(built.strategy.round_log.selected) >= 2
    assert found.data.metrics["dp/epsilon_sample_level_max"] > 0


def test_dp_sgd_under_fedbuff_charges_every_job_that_trained(private_homes):
    """One ledger entry per client training, whatever the version it ended up in (or none)."""
    built, _client, found = _run(
        [
            "privacy=dp_sgd", "privacy.target_epsilon=50", "privacy.max_grad_norm=1.0",
            "num_rounds=4", "lr=0.1", "driver=fedbuff", "driver.concurrency=3",
            "driver.buffer_size=2", "network=mixed",
        ],
        nodes=3,
    )  # fmt: skip
    driver = built.strategy.driver
    ledger = built.strategy.privacy.ledger
    spent = {int(k): len(v) for k, v in ledger.sample_level.items()}
    trained = sum(spent.values())
    # every job whose reply came back was charged; those still in flight at the end were not
    assert driver.counters["jobs"] - 3 <= trained <= driver.counters["jobs"]
    assert found.data.metrics["dp/epsilon_sample_level_max"] > 0
    assert built.history[4] > built.history[0]
