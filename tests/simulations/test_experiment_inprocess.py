"""The whole experiment (config -> build -> rounds -> MLflow) on the in-process grid."""

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

OVERRIDES = ["dataset=digits", "model=mlp", "num_rounds=3", "fraction_evaluate=1.0"]


def _only_run(client):
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id])
    return found


def test_tracked_run_has_params_metrics_artifacts_and_registered_model():
    built = build(compose_experiment(OVERRIDES))
    result = run(InProcessGrid(client_app, 4), built, flwr_run_id=7)
    acc = [built.history[r] for r in range(4)]
    assert acc[3] > acc[0] + 0.5 and acc[3] > 0.8

    client = MlflowClient(resolve_tracking_uri())
    found = _only_run(client)
    run_id = found.info.run_id
    assert found.info.status == "FINISHED"
    params = found.data.params
    assert params["num_rounds"] == "3" and params["strategy._target_"] == "strategies.FlExtFedAvg"
    assert params["partition._target_"] == "fl_ext.data.IidPartitioner"
    assert found.data.tags["flwr.run_id"] == "7" and found.data.tags["choice.dataset"] == "digits"
    history = client.get_metric_history(run_id, "accuracy/test")
    assert [m.step for m in history] == [0, 1, 2, 3]
    assert [m.value for m in history] == pytest.approx(acc)
    assert found.info.run_name == "fedavg-digits-iid-mlp-seed0 num_rounds=3 fraction_evaluate=1.0"
    metrics = found.data.metrics
    # chart sections by prefix; MLflow lists them by name, the test accuracy first
    assert {k.split("/")[0] for k in metrics} <= {
        "accuracy",
        "bytes",
        "clients",
        "data",
        "loss",
        "time",
    }
    assert sorted(metrics)[:2] == ["accuracy/fed_eval", "accuracy/test"]
    for key in (
        "loss/test",
        "loss/train",
        "accuracy/fed_eval",
        "clients/selected",
        "clients/replied",
        "clients/rejected",
        "bytes/down",
        "bytes/up",
        "bytes/up_cum",
        "time/round_s",
    ):
        assert key in metrics, key
    assert metrics["clients/selected"] == 4 and metrics["clients/rejected"] == 0
    assert metrics["bytes/up_cum"] > 3 * 4 * sum(
        a.nbytes for a in result.arrays.to_numpy_ndarrays()
    )

    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.yaml", "accuracy.png"} <= artifacts
    config = yaml.safe_load(open(client.download_artifacts(run_id, "config.yaml")))
    assert config["num_rounds"] == 3 and config["dataset"]["_target_"] == "fl_ext.data.Digits"

    (version,) = client.search_model_versions("name = 'fl-ext-digits-mlp'")
    tags = version.tags
    assert tags["strategy"] == "fedavg" and tags["rounds"] == "3" and tags["num_clients"] == "4"
    assert tags["dataset"] == "digits" and tags["dataset_hash"] == built.split.content_hash
    assert tags["partition"] == "iid" and float(tags["final_test_accuracy"]) == pytest.approx(
        acc[3], abs=1e-4
    )
    uri = client.get_model_version_download_uri("fl-ext-digits-mlp", version.version)
    model = mlflow.pyfunc.load_model(uri)
    logits = model.predict(built.split.test.x)
    assert np.mean(np.argmax(logits, axis=1) == built.split.test.y) == pytest.approx(acc[3])


class LinkLostGrid(InProcessGrid):
    """Loses the connection on the third exchange (round 2's training)."""

    calls = 0

    def push_messages(self, messages):
        self.calls += 1
        if self.calls == 3:
            raise ConnectionError("SuperLink unreachable")
        return super().push_messages(messages)


def test_a_crash_ends_the_mlflow_run_failed_with_what_was_logged():
    built = build(compose_experiment(OVERRIDES))
    with pytest.raises(ConnectionError):
        run(LinkLostGrid(client_app, 4), built)
    client = MlflowClient(resolve_tracking_uri())
    found = _only_run(client)
    assert found.info.status == "FAILED"
    assert "SuperLink unreachable" in found.data.tags["error"]
    steps = [m.step for m in client.get_metric_history(found.info.run_id, "accuracy/test")]
    assert steps == [0, 1]


def test_tracking_none_records_nothing(private_homes):
    built = build(compose_experiment([*OVERRIDES, "num_rounds=1", "tracking=none"]))
    run(InProcessGrid(client_app, 3), built)
    assert not (private_homes / "fl-ext-home" / "mlflow.db").exists()


def test_tracking_uri_from_config(tmp_path):
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    built = build(
        compose_experiment(
            [*OVERRIDES, "num_rounds=1", f"tracking.uri={uri}", "tracking.experiment=x"]
        )
    )
    run(InProcessGrid(client_app, 3), built)
    exp = MlflowClient(uri).get_experiment_by_name("x")
    assert exp is not None and len(MlflowClient(uri).search_runs([exp.experiment_id])) == 1


def test_time_to_target_accuracy_is_logged_once_at_the_first_round_reaching_it():
    built = build(
        compose_experiment(
            [
                *OVERRIDES,
                "num_rounds=4",
                "target_accuracy=0.5",
                "network=ideal",
                "fraction_train=1.0",
            ]
        )
    )
    run(InProcessGrid(client_app, 4), built)
    client = MlflowClient(resolve_tracking_uri())
    run_id = _only_run(client).info.run_id
    first = min(r for r, acc in built.history.items() if acc >= 0.5)
    (hit,) = client.get_metric_history(run_id, "time/to_target_s")
    (sim_hit,) = client.get_metric_history(run_id, "time/sim_to_target_s")
    assert hit.step == first == sim_hit.step and first >= 1
    walls = {m.step: m.value for m in client.get_metric_history(run_id, "time/wall_s")}
    assert hit.value == pytest.approx(walls[first])
    sims = {m.step: m.value for m in client.get_metric_history(run_id, "time/sim_s")}
    assert sim_hit.value == pytest.approx(sims[first]) and sim_hit.value > 0


def test_evaluation_with_train_replaces_the_evaluate_exchange():
    built = build(compose_experiment([*OVERRIDES, "evaluate_with_train=true"]))
    pushed = []

    class CountingGrid(InProcessGrid):
        def push_messages(self, messages):
            messages = list(messages)
            pushed.extend(m.metadata.message_type for m in messages)
            return super().push_messages(messages)

    run(CountingGrid(client_app, 4), built)
    assert set(pushed) == {"train"} and len(pushed) == 3 * 4  # no evaluate exchange at all
    client = MlflowClient(resolve_tracking_uri())
    run_id = _only_run(client).info.run_id
    received = {
        m.step: m.value for m in client.get_metric_history(run_id, "accuracy/fed_eval_received")
    }
    assert sorted(received) == [1, 2, 3]
    # round r's clients evaluated the model round r started from: the previous global model,
    # whose centralized accuracy is history[r - 1]; local test splits are small, so loosely
    assert received[1] < 0.3 and received[3] > received[1] + 0.4
    assert abs(received[3] - built.history[2]) < 0.15
    with pytest.raises(ConfigError, match="local_test_fraction is 0"):
        compose_experiment([*OVERRIDES, "evaluate_with_train=true", "local_test_fraction=0"])


def test_a_refused_push_costs_that_node_only_and_ids_are_flower_like():
    """The grid refuses messages to one node (as Flower does for an unknown node id)."""
    grid = InProcessGrid(client_app, 4, refuse_push=lambda pid: pid == 3)
    assert max(grid.get_node_ids()) >= 2**63 > min(grid.get_node_ids())
    built = build(compose_experiment([*OVERRIDES, "num_rounds=2", "tracking=none"]))
    result = run(grid, built)
    assert [result.train_metrics_clientapp[r]["clients_valid"] for r in (1, 2)] == [3, 3]
    refused = grid.node_id(3)
    assert built.strategy.registry.get(refused).succeeded == 0
    assert built.history[2] > built.history[0] + 0.3


def test_a_reply_is_pulled_once_then_the_grid_answers_as_flowers_superlink():
    from flwr.app import ConfigRecord, RecordDict
    from flwr.common.constant import ErrorCode

    grid = InProcessGrid(client_app, 2)
    node = grid.node_id(0)
    msg = grid.create_message(RecordDict({"config": ConfigRecord({})}), "train", node, "g")
    (mid,) = grid.push_messages([msg])
    (first,) = grid.pull_messages([mid])
    assert first.has_error() and first.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    (again,) = grid.pull_messages([mid])  # Flower deletes a delivered reply
    assert again.has_error() and again.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert again.metadata.reply_to_message_id == mid
    (never,) = grid.pull_messages(["no-such-id"])
    assert never.error.code == ErrorCode.MESSAGE_UNAVAILABLE


def test_server_optimizer_and_early_stopping_from_the_config():
    built = build(
        compose_experiment(
            [
                *OVERRIDES,
                "num_rounds=8",
                "server_opt=fedavgm",
                "server_opt.momentum=0.5",
                "early_stopping.patience=1",
                "early_stopping.metric=test_accuracy",
                "early_stopping.min_delta=0.5",  # no round gains 0.5: stops after round 2
            ]
        )
    )
    run(InProcessGrid(client_app, 4), built)
    assert sorted(built.history) == [0, 1, 2]
    client = MlflowClient(resolve_tracking_uri())
    found = _only_run(client)
    assert found.info.status == "FINISHED"
    assert found.data.tags["early_stopping.stopped"].startswith("early stopping: test_accuracy")
    assert found.data.params["server_opt._target_"] == "fl_ext.server_opt.FedAvgM"
