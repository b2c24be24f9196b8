"""The Airflow DAG (pipelines/fl_ext_pipeline.py) run by Airflow's own ``dag.test()``.

Airflow lives in its own venv (``scripts/setup_airflow.sh`` makes ``.venv-airflow``): the DAG
runs there, in a subprocess with a private AIRFLOW_HOME and sqlite metadata DB, and its tasks
run the project's commands with this venv's Python. The checks are made from the outside: the
driver's exit code, the task states it prints, and what MLflow recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
DAG_FILE = ROOT / "pipelines" / "fl_ext_pipeline.py"
MODEL = "fl-ext-digits-mlp"
TINY = "dataset=digits model=mlp num_rounds=2 local_epochs=1"

pytestmark = pytest.mark.skipif(
    not AIRFLOW_PYTHON.exists(),
    reason=f"{AIRFLOW_PYTHON} missing: run scripts/setup_airflow.sh (CI does, first)",
)


def run_dag(
    tmp_path: Path, conf: dict, *, mark_success: list[str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], dict]:
    """Run the DAG once with dag.test(); the process and its printed task states."""
    airflow_home = tmp_path / "airflow"
    airflow_home.mkdir()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(airflow_home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{airflow_home / 'airflow.db'}",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
    }
    states = tmp_path / "states.json"
    args = [str(AIRFLOW_PYTHON), str(DAG_FILE), "--conf", json.dumps(conf), "--json", str(states)]
    if mark_success:
        args += ["--mark-success", "|".join(mark_success)]
    proc = subprocess.run(
        args, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout
    )
    output = proc.stdout + proc.stderr
    (tmp_path / "dag_test.log").write_text(output)
    assert states.exists(), f"no task states; exit {proc.returncode}:\n{output[-4000:]}"
    return proc, json.loads(states.read_text())


@pytest.mark.slow
def test_pipeline_runs_every_task_and_registers_best(tmp_path: Path) -> None:
    home = Path(os.environ["FL_EXT_HOME"])  # tests/conftest.py: private per test
    conf = {
        "overrides": TINY,
        "sweep": "seed=1",  # one point (a mapped task all the same): each costs a flwr run
        "num_supernodes": 2,
        "registered_model": MODEL,
        "experiment": "pipeline-test",
        "fl_ext_home": str(home),
    }
    proc, result = run_dag(tmp_path, conf, mark_success=[], timeout=1200)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert result["dag_run"] == "success", result
    assert set(result["tasks"]) == {
        "federated_stats", "sweep_points", "train", "evaluate", "pick_best", "serve", "monitor",
    }  # fmt: skip
    assert result["tasks"]["train"] == ["success"], result
    assert all(s == ["success"] for t, s in result["tasks"].items() if t != "train"), result

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipeline-test")
    assert experiment is not None
    runs = [  # simulations.compare may log its comparison as a run of its own
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("fl_ext.kind") != "compare"
    ]
    assert [r.data.params["seed"] for r in runs] == ["1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    best = client.get_model_version_by_alias(MODEL, "best")
    assert best.run_id in {r.info.run_id for r in runs}

    workdir = home / "pipelines" / "pipeline-test"
    picked = json.loads((workdir / "best.json").read_text())
    assert picked["version"] == str(best.version) and picked["from_this_sweep"] is True
    assert {r["run_id"] for r in picked["runs"]} == {r.info.run_id for r in runs}
    assert (workdir / "accuracy.png").stat().st_size > 0
    stats = json.loads((workdir / "stats.json").read_text())
    assert stats["clients"] == 2 and 0.0 < stats["mean"][0] < 1.0 and stats["std"][0] > 0.0
    served = json.loads((workdir / "serve.json").read_text())
    assert served["agree"] is True and served["version"] == str(best.version)
    verdict = json.loads((workdir / "monitor.json").read_text())
    assert verdict["degraded"] is False and verdict["version"] == str(best.version)
    assert verdict["clients"] == 2


@pytest.mark.slow
def test_invalid_training_overrides_fail_the_train_task_and_nothing_after(
    tmp_path: Path,
) -> None:
    home = Path(os.environ["FL_EXT_HOME"])
    conf = {"overrides": "dataset=digits model=mlp num_round=2", "sweep": "", "num_supernodes": 2}
    # federated_stats sees only the data overrides (it would pass): marked success, for speed
    proc, result = run_dag(tmp_path, conf, mark_success=["federated_stats"], timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-4000:]
    assert result["dag_run"] == "failed"
    assert result["tasks"]["train"] == ["failed"]
    for later in ("evaluate", "pick_best", "serve", "monitor"):
        assert result["tasks"][later] == ["upstream_failed"], result
    assert "Configuration error: unknown key 'num_round'; did you mean 'num_rounds'?" in output
    assert "simulations.run --num-supernodes 2 dataset=digits model=mlp num_round=2" in output
    assert not (home / "mlflow.db").exists()  # nothing ran


def test_dag_parses_and_expands_sweeps(tmp_path: Path) -> None:
    """The DAG imports under Airflow with its tasks in order; sweep and data-override parsing."""
    script = """
import json, sys
sys.path.insert(0, sys.argv[1])
import fl_ext_pipeline as p
print(json.dumps({
    "tasks": {t.task_id: sorted(t.downstream_task_ids) for t in p.pipeline.tasks},
    "sweep": p.expand_sweep("seed=0,1 preagg=[nnm],[arc,nnm]"),
    "empty": p.expand_sweep(""),
    "data": p.data_overrides(["dataset=digits", "model=mlp", "partition.alpha=0.3",
                              "+preprocessing=federated_stats", "seed=3", "num_rounds=2"]),
}))
try:
    p.expand_sweep("seed")
except ValueError as err:
    print(err)
"""
    proc = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", script, str(DAG_FILE.parent)],
        env={**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")},
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    out = json.loads(lines[-2])
    assert out["tasks"] == {
        "federated_stats": ["sweep_points"],
        "sweep_points": ["train"],
        "train": ["evaluate", "pick_best"],
        "evaluate": ["pick_best"],
        "pick_best": ["monitor", "serve"],
        "serve": [],
        "monitor": [],
    }
    assert out["sweep"] == [
        ["seed=0", "preagg=[nnm]"], ["seed=0", "preagg=[arc,nnm]"],
        ["seed=1", "preagg=[nnm]"], ["seed=1", "preagg=[arc,nnm]"],
    ]  # fmt: skip
    assert out["empty"] == [[]]
    assert out["data"] == [
        "dataset=digits", "partition.alpha=0.3", "+preprocessing=federated_stats", "seed=3",
    ]  # fmt: skip
    assert lines[-1] == "sweep axis 'seed' is not key=v1,v2,..."
