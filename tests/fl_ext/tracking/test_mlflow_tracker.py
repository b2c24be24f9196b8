import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from fl_ext.models import MLP
from fl_ext.tracking import MlflowTracker, NullTracker, resolve_tracking_uri
from fl_ext.tracking.flatten import flatten
from fl_ext.tracking.plots import accuracy_plot_png


def test_default_uri_is_absolute_sqlite_under_home(private_homes, monkeypatch):
    uri = resolve_tracking_uri(None)
    assert uri == f"sqlite:///{private_homes / 'fl-ext-home' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    assert resolve_tracking_uri(None) == "sqlite:////tmp/elsewhere.db"
    assert resolve_tracking_uri("sqlite:////tmp/configured.db") == "sqlite:////tmp/configured.db"


def test_run_params_metrics_artifacts_model_and_registry(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = MlflowTracker(uri=uri, experiment="exp")
    params = flatten({"a": {"b": 1, "c": [1, 2]}, **{f"k{i}": i for i in range(150)}})
    tracker.start(run_name="r", params=params, tags={"t": "v"})
    tracker.log_metrics(1, {"test_accuracy": 0.5, "test_loss": 1.0})
    tracker.log_metrics(2, {"test_accuracy": 0.75})
    tracker.log_text("x: 1\n", "config.yaml")
    tracker.log_png(accuracy_plot_png({"r": {1: 0.5, 2: 0.75}}, title="t"), "accuracy.png")
    torch.manual_seed(0)
    model = MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(8,))
    version = tracker.log_model(
        model,
        input_example=np.zeros((2, 1, 8, 8), np.float32),
        registered_name="reg",
        tags={"strategy": "fedavg", "rounds": "2"},
    )
    tracker.end("FINISHED")

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["a.b"] == "1" and run.data.params["a.c"] == "[1, 2]"
    assert run.data.params["k149"] == "149"
    assert run.data.tags["t"] == "v"
    history = client.get_metric_history(run.info.run_id, "accuracy/test")
    assert [m.value for m in history] == [0.5, 0.75]
    assert set(run.data.metrics) == {"accuracy/test", "loss/test"}
    names = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "accuracy.png"} <= names
    exp = client.get_experiment_by_name("exp")
    assert exp.artifact_location == (tmp_path / "mlartifacts").as_uri()
    assert version == "1"
    mv = client.get_model_version("reg", "1")
    assert mv.tags == {"strategy": "fedavg", "rounds": "2"}
    loaded = mlflow.pyfunc.load_model(client.get_model_version_download_uri("reg", "1"))
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    expected = model(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(loaded.predict(x), expected, atol=1e-6)


def test_failed_status_is_recorded(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = MlflowTracker(uri=uri)
    tracker.start(run_name="r", params={}, tags={})
    tracker.log_metrics(1, {"train_loss": 0.1})
    tracker.end("FAILED")
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED" and run.data.metrics["loss/train"] == 0.1


def test_null_tracker_and_bad_experiment():
    NullTracker().start(run_name="x", params={}, tags={})
    with pytest.raises(ValueError, match="experiment"):
        MlflowTracker(experiment="")
    with pytest.raises(RuntimeError, match="start"):
        MlflowTracker(uri="sqlite:////tmp/x.db").log_metrics(1, {"a": 1})


def test_experiment_opens_in_the_model_training_view(tmp_path):
    """MLflow 3 reads the experiment kind from this tag; without it, the UI infers one."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    MlflowTracker(uri=uri, experiment="new").start(run_name="r", params={}, tags={})
    client = MlflowClient(uri)
    kind = client.get_experiment_by_name("new").tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    # an experiment made elsewhere gets the tag on first use; a kind chosen later is kept
    old = client.create_experiment("old")
    MlflowTracker(uri=uri, experiment="old").start(run_name="r", params={}, tags={})
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    client.set_experiment_tag(old, "mlflow.experimentKind", "finetuning")
    MlflowTracker(uri=uri, experiment="old").start(run_name="r", params={}, tags={})
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "finetuning"


def test_resume_finds_the_last_round_under_the_mlflow_name(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = MlflowTracker(uri=uri)
    tracker.start(run_name="r", params={}, tags={})
    for step in (1, 2, 3):
        tracker.log_metrics(step, {"round_time_s": 0.1})
    tracker.end("FAILED")
    assert MlflowTracker(uri=uri).resume(tracker.run_id) == 3
