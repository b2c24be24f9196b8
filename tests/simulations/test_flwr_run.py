"""End-to-end: the real ``flwr run`` simulation (SuperLink, Ray, ServerApp, ClientApps)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.flwr_cli import run_app
from simulations.inprocess import InProcessGrid
from simulations.local_superlink import LocalSuperLink
from simulations.run_loop import run

pytestmark = pytest.mark.slow
OVERRIDES = ["dataset=digits", "model=mlp", "num_rounds=3"]


@pytest.fixture(scope="module")
def link(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e")
    with LocalSuperLink(home / "flwr", extra_env={"FL_EXT_HOME": str(home / "fl-ext")}) as started:
        started.fl_ext_home = home / "fl-ext"
        yield started
    assert started.process.poll() is not None  # our SuperLink is gone


def test_flwr_run_trains_tracks_registers_and_matches_the_inprocess_driver(link, monkeypatch):
    outcome = run_app(link, OVERRIDES, num_supernodes=4)
    assert outcome.ok, outcome.output[-3000:]
    assert "[ROUND 3/3]" in outcome.output and "test acc" in outcome.output
    lines = outcome.output.splitlines()
    for server_round in (1, 2, 3):  # one console line per event: Opacus/root never doubles it
        assert sum(f"Round {server_round}/3:" in line for line in lines) == 1, server_round
    assert sum("Finished: 3 rounds" in line for line in lines) == 1
    for noise in ("DEBUG", "Manually terminating", "SADeprecationWarning", "Global Arrays"):
        assert noise not in outcome.output, noise

    uri = f"sqlite:///{link.fl_ext_home / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`flwr.run_id` = '{outcome.run_id}'"
    )
    assert found.info.status == "FINISHED"
    curve = {m.step: m.value for m in client.get_metric_history(found.info.run_id, "accuracy/test")}
    assert sorted(curve) == [0, 1, 2, 3]
    assert curve[3] > curve[1] > curve[0] and curve[3] > 0.8
    assert found.data.metrics["bytes/up_cum"] > 0 and found.data.metrics["clients/replied"] == 4
    (version,) = client.search_model_versions("name = 'fl-ext-digits-mlp'")
    assert version.tags["num_clients"] == "4" and version.tags["strategy"] == "fedavg"

    # the in-process driver, same config and seed, gives the same accuracy curve
    monkeypatch.setenv("FL_EXT_HOME", str(link.fl_ext_home.parent / "inprocess"))
    built = build(compose_experiment([*OVERRIDES, "tracking=none"]))
    run(InProcessGrid(client_app, 4), built)
    one_example = 1.0 / len(built.split.test)
    for rnd, acc in curve.items():
        assert abs(built.history[rnd] - acc) <= one_example + 1e-9, (rnd, built.history, curve)


@pytest.mark.parametrize(
    "selection",
    [
        # and capacity-scaled sub-models by device speed, with federated evaluation
        "selection=oort network=mixed preprocessing=federated_stats preprocessing.min_count=5 "
        "submodel=heterofl submodel.assign=network fraction_evaluate=0.5",
        "selection=power_of_choice driver=fedbuff driver.concurrency=3 driver.buffer_size=2",
        "selection=weighted secagg=secagg_plus",  # and the SecAgg+ phases as real messages
    ],
)
def test_every_selector_runs_through_a_real_flwr_run(link, selection):
    """Real SuperLink node ids are random uint64: a selector must hand them back exact."""
    overrides = [
        "dataset=digits",
        "model=mlp",
        "num_rounds=2",
        "fraction_train=0.5",
        "fraction_evaluate=0",
        "tracking=none",
        *selection.split(),
    ]
    outcome = run_app(link, overrides, num_supernodes=6)
    assert outcome.ok, outcome.output[-3000:]
    assert "Invalid destination node ID" not in outcome.output
    # every round selected and trained real nodes (a simulated network may still drop a round)
    if "fedbuff" in selection:  # model versions instead of rounds, real push/pull
        assert "Version 2/2: " in outcome.output and "Finished: 2 model versions" in outcome.output
        return
    assert "[ROUND 2/2]" in outcome.output and "Round 1/2: " in outcome.output
    if "federated_stats" in selection:  # the query phase as real messages, before round 1
        assert "Federated statistics from 6 clients" in outcome.output
    if "submodel" in selection:  # slices trained and evaluated: no schema refused
        assert "sub-models: static" in outcome.output
        assert "incompatible" not in outcome.output and "rejected" not in outcome.output
    if "secagg" in selection:
        assert "secure aggregation: plus graph" in outcome.output
        assert "abandoned" not in outcome.output and "refused" not in outcome.output
        assert "Round 2/2: test acc" in outcome.output


def test_flwr_run_with_a_bad_config_fails_with_the_reason(link):
    outcome = run_app(link, ["dataset=digits", "lr=-1"], num_supernodes=2)
    assert outcome.status == "finished:failed"
    assert "lr=-1 is invalid: must be > 0" in outcome.output


def test_sweep_runs_every_combination_and_compares(tmp_path):
    env = {**os.environ, "FL_EXT_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.sweep",
            "-m",
            "dataset=digits",
            "model=mlp",
            "num_rounds=1",
            "fraction_evaluate=0",
            "strategy=fedavg,fedprox",
            "sweep.num_supernodes=2",
            "sweep.experiment=sweep-test",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    for strategy in ("fedavg", "fedprox"):
        name = f"{strategy}-digits-iid-mlp-seed0 num_rounds=1 fraction_evaluate=0"
        assert re.search(rf"\| {name} \| \w{{8}} \| FINISHED \| {strategy} \|", out), out[-2000:]
    for job in (0, 1):  # each job's round lines are shown as it runs
        assert (
            sum(line.startswith(f"[job {job}] INFO :      Round 1/1:") for line in out.splitlines())
            == 1
        )
    assert (tmp_path / "multirun" / "accuracy.png").stat().st_size > 1000
    client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("sweep-test")
    assert len(client.search_runs([exp.experiment_id])) == 2
