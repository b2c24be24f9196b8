"""The monitor command as users run it (real ``flwr run``, real MLflow); the statistics command
runs end to end in tests/pipelines (the DAG's first task)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

ROOT = Path(__file__).resolve().parents[2]
DATA = ["dataset=digits", "model=mlp"]


@pytest.mark.slow
def test_monitor_command_reports_tags_and_exits_3_when_told_to_fail_on_degradation(tmp_path):
    train = [*DATA, "num_rounds=2", "preprocessing=federated_stats", "fraction_evaluate=1.0"]
    run(InProcessGrid(client_app, 3), build(compose_experiment(train)))  # registers @best

    report = tmp_path / "monitor.json"
    done = subprocess.run(
        [
            sys.executable, "-m", "simulations.monitor", "--num-supernodes", "3",
            "--model", "fl-ext-digits-mlp@best", "--json", str(report),
            "--max-drop", "1e-9", "--max-stats-drift", "1e-9", "--fail-on-degraded", *DATA,
            "local_test_fraction=0.3",  # other local splits: the statistics move a little
        ],
        env=os.environ.copy(), capture_output=True, text=True, timeout=600, cwd=ROOT,
        check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 3, out[-3000:]  # any drift at all counts now
    assert "DEGRADED" in out and "data drifted" in out
    verdict = json.loads(report.read_text())
    assert verdict["degraded"] and verdict["clients"] == 3 and verdict["version"] == "1"
    assert any("drifted" in r for r in verdict["reasons"])


@pytest.mark.parametrize(
    ("module", "args", "key"),
    [
        ("simulations.federated_stats", ["task=monitor"], "task"),
        ("simulations.monitor", ["--model", "m@best", "monitor.max_drop=0.1"], "monitor.max_drop"),
        ("simulations.monitor", ["--model", "m@best", "+task=train"], "task"),
    ],
)
def test_keys_the_command_sets_are_refused_not_silently_overridden(module, args, key, capsys):
    main = __import__(module, fromlist=["main"]).main
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert f"{key} is set by this command" in capsys.readouterr().err


def test_a_bad_override_is_a_config_error_before_anything_starts():
    from simulations.federated_stats import main as stats_main
    from simulations.monitor import main as monitor_main

    lines = []
    assert stats_main(["lr=-1"], write=lines.append) == 2
    assert monitor_main(["--model", "m@best", "num_round=1"], write=lines.append) == 2
    assert lines[0] == "Configuration error: lr=-1 is invalid: must be > 0"
    assert "did you mean 'num_rounds'" in lines[1]
