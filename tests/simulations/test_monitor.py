"""Monitoring a registered model: healthy on its own data, degraded after a feature shift.

A real git + DVC repo holds the clients' data; version 2 is the same digits 0.5 brighter (a
new sensor). A model trained with federated statistics on version 1 is monitored on both:
on version 1 it stays healthy, on version 2 its federated accuracy and the data statistics
both move, the registered version is tagged ``retrain_suggested`` with the reason, and the
alert reaches a webhook served on 127.0.0.1.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from mlflow.tracking import MlflowClient

from fl_ext.data.dvc_export import init_repo, update_repo
from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.monitoring import REPORT
from simulations.tasks import run_task

pytestmark = pytest.mark.slow
NAME = "fl-ext-dvc-mlp"


@pytest.fixture(autouse=True)
def _dvc_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))


def _data(repo, rev):
    return [
        "dataset=dvc", f"dataset.repo={repo}", "dataset.path=data/digits.npz",
        f"dataset.rev={rev}", "dataset.num_classes=10", "model=mlp",
    ]  # fmt: skip


@pytest.fixture
def webhook():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alert", received
    server.shutdown()
    server.server_close()


def _monitor(repo, rev, hook, nodes=4):
    built = build(
        compose_experiment(
            [
                *_data(repo, rev),
                "task=monitor",
                f"monitor.model={NAME}@final",
                f"monitor.webhook={hook}",
                "monitor.max_drop=0.1",
            ]
        )
    )
    run_task(InProcessGrid(client_app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext-monitor")
    (found,) = client.search_runs([exp.experiment_id], max_results=1, order_by=["start_time DESC"])
    report = json.loads(built.tracker.read_text(REPORT))
    return client, found, report


def test_a_feature_shift_is_detected_tagged_and_alerted(tmp_path, webhook):
    hook, received = webhook
    repo = tmp_path / "fl-data"
    v1 = init_repo(repo, dataset="digits", remote=tmp_path / "remote")
    train = build(
        compose_experiment(
            [
                *_data(repo, v1.commit),
                "preprocessing=federated_stats",
                "preprocessing.min_count=5",
                "num_rounds=3",
                "fraction_evaluate=1.0",
                f"tracking.registered_model_name={NAME}",
            ]
        )
    )
    from simulations.run_loop import run

    run(InProcessGrid(client_app, 4), train)
    client = MlflowClient(resolve_tracking_uri())
    registered = client.get_model_version_by_alias(NAME, "final")
    assert "fed_eval_accuracy" in registered.tags and "stats_mean" in registered.tags

    client, found, report = _monitor(repo, v1.commit, hook)
    assert not report["degraded"], report["reasons"]
    assert report["reference"] == "fed_eval_accuracy"
    assert abs(report["accuracy"] - report["reference_accuracy"]) < 0.05
    assert report["mean_shift_sd"] < 0.05  # same data, same statistics
    assert found.data.tags["monitor.verdict"] == "healthy" and not received
    assert "retrain_suggested" not in client.get_model_version(NAME, registered.version).tags

    v2 = update_repo(repo, transform="brightness=0.5")
    client, found, report = _monitor(repo, v2.commit, hook)
    assert report["degraded"]
    assert report["accuracy"] < report["reference_accuracy"] - 0.1
    assert report["mean_shift_sd"] > 0.5
    assert any("accuracy" in r for r in report["reasons"])
    assert any("drifted" in r for r in report["reasons"])
    tags = client.get_model_version(NAME, registered.version).tags
    assert tags["retrain_suggested"] == "true" and "drifted" in tags["retrain_reason"]
    assert found.data.tags["monitor.verdict"] == "degraded"
    assert found.data.metrics["monitor/accuracy"] == pytest.approx(report["accuracy"])
    (alert,) = received
    assert alert["alert"] == "retrain_suggested" and alert["version"] == str(registered.version)


def test_bad_monitor_settings_fail_at_start():
    for overrides, match in (
        (["task=monitor"], "monitor.model"),
        (["task=monitor", "monitor.model=x@best", "monitor.max_drop=0"], "max_drop"),
        (["task=monitor", "monitor.model=x@best", "monitor.webhook=ftp://h"], "webhook"),
        (["task=statistics"], "preprocessing=federated_stats"),
        (["task=serve"], "task"),
    ):
        with pytest.raises(ConfigError, match=match):
            compose_experiment(["dataset=digits", "model=mlp", *overrides])


def test_an_unknown_registered_model_is_a_clear_error():
    built = build(
        compose_experiment(
            ["dataset=digits", "model=mlp", "task=monitor", "monitor.model=nope@best"]
        )
    )
    with pytest.raises(ConfigError, match="nope@best"):
        run_task(InProcessGrid(client_app, 2), built)


def test_a_registered_model_that_does_not_fit_the_config_is_a_clear_error():
    from simulations.run_loop import run

    base = ["dataset=digits", "model=mlp", "num_rounds=1", "fraction_evaluate=0.0"]
    run(InProcessGrid(client_app, 2), build(compose_experiment(base)))
    built = build(
        compose_experiment(
            [*base, "model.hidden=[16]", "task=monitor", "monitor.model=fl-ext-digits-mlp@final"]
        )
    )
    with pytest.raises(ConfigError, match="does not fit the configured model"):
        run_task(InProcessGrid(client_app, 2), built)
