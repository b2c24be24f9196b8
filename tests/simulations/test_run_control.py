"""``flwr stop`` of a simulation run: the ServerApp stops, its MLflow run ends KILLED, tagged.

Real processes: our own simulation SuperLink on free loopback ports, ``flwr run``,
``flwr stop``, the ``flwr-simulation`` process with Ray, MLflow on sqlite.
"""

import json
import subprocess
import threading

import pytest
from mlflow.tracking import MlflowClient

from fl_ext.tracking.metric_names import metric_key
from simulations.flwr_cli import APP_DIR, run_status, toml_string
from simulations.local_superlink import LocalSuperLink, flwr_bin, free_port, wait_until
from simulations.run_control import RunControl, runtime_probe


def test_outside_an_app_process_there_is_nothing_to_ask():
    assert runtime_probe(["pytest", "--token", "ab" * 32]) is None
    assert runtime_probe(["/venv/bin/flwr-simulation", "--token-stdin"]) is None
    control = RunControl.for_this_process()
    assert not control.active and control() is None
    control.close_on_exit(lambda: pytest.fail("no exit handler outside an app process"))


def test_the_first_stop_answer_is_kept_and_reported_once():
    answers, stops = iter([None, False, True, False]), []

    def probe():
        return next(answers)

    control = RunControl(probe, run_id=7, on_stop=stops.append)
    assert control() is None and control() is None
    assert control() == "run 7 was stopped on the SuperLink (flwr stop)"
    assert control() == control.reason and stops == [control.reason]  # not asked again

    def broken():
        raise OSError("network down")

    assert RunControl(broken)() is None  # a failed probe never ends a run


@pytest.mark.slow
def test_the_probe_reads_a_revoked_token_as_ended_and_an_unreachable_link_as_unknown(tmp_path):
    with LocalSuperLink(tmp_path / "flwr") as link:
        argv = [
            "/venv/bin/flwr-simulation",
            "--runtime-api-address",
            f"127.0.0.1:{link.http_port}",
            "--token",
            "0" * 64,  # a token the SuperLink does not hold: what `flwr stop` leaves
            "--insecure",
        ]
        probe = runtime_probe(argv)
        assert probe is not None and probe() is True
    argv[2] = f"127.0.0.1:{free_port()}"
    assert runtime_probe(argv)() is None


@pytest.mark.slow
def test_flwr_stop_after_round_one_ends_a_simulation_early_and_closes_its_mlflow_run(tmp_path):
    # far more rounds than a `flwr stop` can take to land, even on a loaded machine (with 6,
    # a run on a busy CI worker finished before the stop did)
    checkpoints, num_rounds = tmp_path / "ck", 100
    overrides = [
        "dataset=digits",
        "model=mlp",
        f"num_rounds={num_rounds}",
        "local_epochs=5",
        "fraction_evaluate=0",
        "tracking.experiment=stopped",
        f"checkpoint.dir={checkpoints}",
    ]
    fl_ext_home = tmp_path / "fl-ext"
    homes = {
        "FL_EXT_HOME": str(fl_ext_home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{fl_ext_home / 'mlflow.db'}",
    }
    with LocalSuperLink(tmp_path / "flwr", extra_env=homes) as link:
        command = [
            flwr_bin("flwr"), "run", str(APP_DIR), "--stream",
            "--run-config", f"overrides={toml_string(' '.join(overrides))}",
            "--federation-config", "num-supernodes=2",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, env=link.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
        reader.start()
        try:
            wait_until((checkpoints / "round-000001").is_dir, 600, "round 1 of the simulation")
            started = [ln for ln in lines if "Successfully started run" in ln]
            run_id = int(started[0].rsplit(" ", 1)[1])
            stopped = subprocess.run(
                [flwr_bin("flwr"), "stop", str(run_id), "--format", "json"],
                env=link.env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert json.loads(stopped.stdout)["success"], stopped.stdout + stopped.stderr
            process.wait(timeout=300)
        finally:
            if process.poll() is None:
                process.kill()
        assert run_status(link, run_id) == "finished:stopped"
        client = MlflowClient(f"sqlite:///{fl_ext_home / 'mlflow.db'}")
        exp = client.get_experiment_by_name("stopped")

        def closed():
            (run,) = client.search_runs([exp.experiment_id])
            return run.info.status != "RUNNING"

        wait_until(closed, 120, "the MLflow run closed by the stopped ServerApp")
    # the SuperLink and everything it started is gone: nothing can log any more
    (found,) = client.search_runs([exp.experiment_id])
    assert found.info.status == "KILLED", "".join(lines)[-3000:]
    assert found.data.tags["stopped"] == "the run was stopped on the SuperLink (flwr stop)"
    assert "error" not in found.data.tags
    steps = [
        m.step for m in client.get_metric_history(found.info.run_id, metric_key("test_accuracy"))
    ]
    assert steps == list(range(len(steps))) and 2 <= len(steps) < num_rounds + 1  # 0, 1, ...
    saved = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("round-"))
    assert saved[0] == "round-000001" and len(saved) < num_rounds
    assert len(saved) >= len(steps) - 1  # every logged round was saved first
    # a stopped run never takes an alias (it may register its model, without one)
    for version in client.search_model_versions():
        assert not client.get_model_version(version.name, version.version).aliases, version
