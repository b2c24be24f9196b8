"""preprocessing=federated_stats end to end: normalised clients, logged figures, served model."""

import json

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from flwr.app import Context
from flwr.clientapp import ClientApp
from mlflow.tracking import MlflowClient

from fl_ext.data.federated import client_data
from fl_ext.data.normalize import NORMALIZE_KEY
from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run
from simulations.stats_phase import ARTIFACT, apply_statistics

BASE = ["dataset=digits", "model=mlp", "fraction_evaluate=0.5", "local_epochs=1"]
STATS = ["preprocessing=federated_stats", "preprocessing.min_count=5"]


def _pooled_train(built, n):
    parts = [
        client_data(
            dataset_spec_json=str(built.train_config["dataset-spec"]),
            partition_spec_json=str(built.train_config["partition-spec"]),
            partition_id=p,
            num_partitions=n,
            local_test_fraction=0.1,
        ).train.x
        for p in range(n)
    ]
    return np.concatenate(parts).astype(np.float64)


def test_every_client_and_the_registered_model_use_the_federation_statistics():
    n = 4
    built = build(compose_experiment([*BASE, *STATS, "num_rounds=2"]))
    run(InProcessGrid(client_app, n), built)
    pooled = _pooled_train(built, n)
    norm = built.normalization
    assert norm.mean[0] == pytest.approx(pooled.mean(), rel=1e-12)
    assert norm.std[0] == pytest.approx(pooled.std(), rel=1e-11)
    assert json.loads(str(built.train_config[NORMALIZE_KEY]))["mean"] == list(norm.mean)
    assert NORMALIZE_KEY in built.evaluate_config
    assert built.history[2] > 0.6  # trained on normalised data, evaluated the same way

    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    assert found.data.tags["stats.clients"] == str(n)
    assert json.loads(found.data.tags["stats.mean"])[0] == pytest.approx(norm.mean[0], abs=1e-6)
    logged = json.loads(built.tracker.read_text(ARTIFACT))
    assert logged["examples"] == pooled.shape[0] and len(logged["data_versions"]) == n

    version = client.get_model_version_by_alias("fl-ext-digits-mlp", "final")
    served = mlflow.pyfunc.load_model(
        client.get_model_version_download_uri(version.name, version.version)
    )
    raw = built.split.test.x[:16]
    with torch.no_grad():
        direct = built.model(torch.from_numpy(built.server_test().x[:16])).numpy()
    np.testing.assert_allclose(served.predict(raw), direct, rtol=1e-5, atol=1e-5)


def test_a_resumed_run_reads_its_statistics_back_instead_of_asking_again():
    built = build(compose_experiment([*BASE, *STATS, "num_rounds=1"]))
    built.tracker.start(run_name="stats", params={}, tags={})
    built.tracker.log_text(json.dumps({"mean": [0.25], "std": [0.5]}), ARTIFACT)
    no_query = InProcessGrid(ClientApp(), 2)  # answers every query with an error
    apply_statistics(built, no_query, no_query.get_node_ids(), resumed=True)
    assert built.normalization.mean == (0.25,) and built.normalization.std == (0.5,)
    fresh = build(compose_experiment([*BASE, *STATS, "num_rounds=1"]))
    fresh.tracker.start(run_name="fresh", params={}, tags={})
    with pytest.raises(RuntimeError, match="usable replies"):
        apply_statistics(fresh, no_query, no_query.get_node_ids(), resumed=False)


def test_noisy_statistics_are_charged_to_each_client_in_the_dp_sgd_ledger(private_homes):
    built = build(
        compose_experiment(
            [
                *BASE,
                *STATS,
                "preprocessing.noise_multiplier=10",
                "privacy=dp_sgd",
                "privacy.target_epsilon=50",
                "num_rounds=1",
                "fraction_evaluate=0.0",
            ]
        )
    )
    run(InProcessGrid(client_app, 3), built)
    ledger = json.loads((private_homes / "fl-ext-home/privacy/fl-ext/ledger.json").read_text())
    first = ledger["rounds"][0]
    assert first["round"] == 0 and first["mechanism"] == "federated_stats_gaussian"
    assert sorted(first["sample_level"]) == ["0", "1", "2"]
    assert all(e == [10.0, 1.0, 1] for e in first["sample_level"].values())
    assert [r["round"] for r in ledger["rounds"]] == [0, 1]
    assert 0.0 <= built.normalization.mean[0] <= 1.0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["preprocessing.noise_multiplier=1"], "needs privacy=dp_sgd"),
        (["secagg=secagg_plus"], "secure sum"),
        (["aggregator=fltrust", "dataset.root_size=50"], "root set"),
        (["preprocessing.min_count=0"], "min_count"),
        (["preprocessing.bogus=1"], "bogus"),
    ],
)
def test_combinations_that_cannot_work_fail_at_build(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment([*BASE, *STATS, *overrides, "tracking=none"]))


def test_a_client_refuses_a_malformed_normalisation():
    from simulations.client_app import node_data

    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2},
                      state=None, run_config={})  # fmt: skip
    built = build(compose_experiment([*BASE, "tracking=none"]))
    config = {**dict(built.train_config), NORMALIZE_KEY: json.dumps({"mean": [0.1], "std": [0]})}
    with pytest.raises(ValueError, match="stds must be > 0"):
        node_data(context, config)
    config[NORMALIZE_KEY] = json.dumps({"mean": [0.1, 0.2], "std": [1.0, 1.0]})
    with pytest.raises(ValueError, match="2 channel"):
        node_data(context, config)
