"""fl-ext pipeline: an Airflow 3 DAG over the project's own commands.

    federated_stats -> sweep_points -> train (one task per sweep point) -> evaluate
        -> pick_best -> serve, monitor

Each task runs one fl-ext command with the project's Python (``<project_root>/.venv/bin/python``)
in a subprocess and fails, with the command's last output lines in its error, when the command
exits non-zero; nothing of the project is imported here (this file needs only the standard
library and Airflow, which lives in its own ``.venv-airflow``: ``scripts/setup_airflow.sh``).

- ``federated_stats``: ``python -m simulations.federated_stats`` on the data overrides of
  ``overrides`` (``dataset*``, ``partition*``, ``preprocessing*``, ``seed``,
  ``local_test_fraction``): per-channel count/mean/std computed on the clients, written to
  ``stats.json``. A bad training key fails ``train``, not this task.
- ``sweep_points``: the Cartesian product of the ``sweep`` axes (``seed=0,1 lr=0.05,0.1``).
- ``train``: one ``python -m simulations.run`` per point (a mapped task: a failed point fails,
  and is retried, alone; one at a time, ``max_active_tis_per_dagrun=1``), every run in one
  MLflow experiment and registering under ``registered_model`` (the runs move ``@best``).
- ``evaluate``: ``python -m simulations.compare``: the sweep's table and accuracy plot.
- ``pick_best``: reads MLflow: every point's run finished, and the version ``@best`` points
  at (it may predate this sweep: ``@best`` is the best ever on that held-out split).
- ``serve``: ``python -m simulations.serve_check --model <name>@best``: that version served by
  ``mlflow models serve`` on 127.0.0.1 answers held-out images as the registry's copy does
  (``serve.json``), then the server is stopped.
- ``monitor``: ``python -m simulations.monitor --model <name>@best``: federated evaluation of
  that version on the clients; a degraded verdict is reported (``monitor.json``), not a failure.

Files go to ``$FL_EXT_HOME/pipelines/<experiment>/``. Trigger it from Airflow with a conf such
as ``{"overrides": "dataset=digits model=mlp num_rounds=5", "sweep": "seed=0,1,2"}``, or run
it once without a scheduler (Airflow's ``dag.test()``, a private ``AIRFLOW_HOME`` advised)::

    AIRFLOW_HOME=/tmp/af .venv-airflow/bin/python pipelines/fl_ext_pipeline.py \
        --conf '{"num_supernodes": 2}'
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import shlex
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run by dag.test() (main): set before Airflow reads its config
    os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(Path(__file__).resolve().parent))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow.sdk import Param, dag, get_current_context, task

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TAIL_LINES = 40  # of a failed command's output, in the task's error
DATA_KEYS = ("dataset", "partition", "preprocessing", "seed", "local_test_fraction")
# as scripts/env.sh: never let a SuperLink `uv sync` the app (it would fetch a CUDA torch)
PROJECT_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    "DVC_NO_ANALYTICS": "1",
}
RUN_ENDED = re.compile(r"MLflow run ([0-9a-f]{32}) ended")  # simulations.run's closing lines
PASSTHROUGH = {"fl_ext_home": "FL_EXT_HOME", "mlflow_tracking_uri": "MLFLOW_TRACKING_URI"}

# Run with the project's Python: every sweep point's MLflow run finished, and the version @best
# names (the runs move @best themselves when they beat it on the same held-out split).
PICK_BEST = """
import json, sys
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from fl_ext.tracking import resolve_tracking_uri

name, run_ids, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
uri = resolve_tracking_uri()
client = MlflowClient(uri)
runs = [client.get_run(run_id) for run_id in run_ids]
unfinished = [(r.info.run_name, r.info.status) for r in runs if r.info.status != "FINISHED"]
if unfinished:
    sys.exit(f"{len(unfinished)} of the {len(runs)} sweep runs did not finish: {unfinished}")
try:
    best = client.get_model_version_by_alias(name, "best")
except MlflowException as err:
    sys.exit(f"no version of registered model {name!r} has the alias @best at {uri}: {err}")
accuracy = best.tags.get("test_accuracy")
result = {
    "name": name,
    "alias": "best",
    "version": str(best.version),
    "run_id": best.run_id,
    "test_accuracy": float(accuracy) if accuracy is not None else None,
    "from_this_sweep": best.run_id in run_ids,
    "tracking_uri": uri,
    "runs": [{"run_id": r.info.run_id, "name": r.info.run_name} for r in runs],
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
print(f"{name}@best = version {best.version} (test accuracy {accuracy}, run {best.run_id}, "
      f"from this sweep: {result['from_this_sweep']})")
"""


class CommandFailed(RuntimeError):
    """A project command exited non-zero; the message holds its last output lines."""


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


def _python(params: dict[str, Any]) -> str:
    return params["python"] or str(Path(params["project_root"]) / ".venv" / "bin" / "python")


def _env(params: dict[str, Any]) -> dict[str, str]:
    """The worker's environment, the project venv first on PATH, the tracking passthrough."""
    env = {**os.environ, **PROJECT_ENV}
    bin_dir = str(Path(_python(params)).parent)  # flwr starts `flower-superlink` by name
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    for key, name in PASSTHROUGH.items():
        if params[key]:
            env[name] = str(params[key])
    return env


def _experiment(params: dict[str, Any]) -> str:
    """The MLflow experiment of this DAG run's sweep: the param, or pipeline-<run id>."""
    if params["experiment"]:
        return str(params["experiment"])
    run_id = str(get_current_context()["run_id"])  # e.g. manual__2026-12-02T14:34:14.424864+00:00
    when = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", run_id)
    stamp = when.group(0) if when else run_id
    return "pipeline-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", stamp).strip("-")


def _workdir(params: dict[str, Any]) -> Path:
    """$FL_EXT_HOME/pipelines/<experiment>: where this run's JSON files and plot go."""
    env = _env(params)
    home = Path(env.get("FL_EXT_HOME") or "~/.fl-ext").expanduser().resolve()
    out = home / "pipelines" / _experiment(params)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _overrides(params: dict[str, Any]) -> list[str]:
    return shlex.split(params["overrides"])


def run_command(args: list[str], params: dict[str, Any]) -> list[str]:
    """Run a project command, its output streamed to the task log; its lines, or CommandFailed.

    ``args`` follow the project's Python (``-m module ...`` or ``-c script ...``).
    """
    cmd = [_python(params), *args]
    shown = shlex.join(cmd) if len(args) < 2 or args[0] != "-c" else f"{cmd[0]} -c <script> ..."
    log.info("running %s", shown)
    lines: list[str] = []
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(
        cmd,
        cwd=params["project_root"],
        env=_env(params),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            print(line, flush=True)
            lines.append(line)
            tail.append(line)
        rc = proc.wait()
    if rc != 0:
        raise CommandFailed(f"`{shown}` exited {rc}; its last lines:\n" + "\n".join(tail))
    return lines


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CommandFailed(
            f"the command exited 0 but {path} is missing or not JSON: {err}"
        ) from err


def data_overrides(overrides: list[str]) -> list[str]:
    """The overrides that say what data the federation holds (dataset, partition, seed, ...)."""
    return [o for o in overrides if re.split(r"[.=]", o.lstrip("+~"), maxsplit=1)[0] in DATA_KEYS]


def expand_sweep(spec: str) -> list[list[str]]:
    """``"seed=0,1 lr=0.1,0.2"`` -> one override list per combination (``""``: one, empty).

    A value with a comma of its own (a list) goes in brackets: ``preagg=[nnm],[arc,nnm]``.
    """
    axes = []
    for axis in shlex.split(spec):
        key, sep, values = axis.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"sweep axis {axis!r} is not key=v1,v2,...")
        axes.append([f"{key}={v}" for v in _split_values(values)])
    return [list(point) for point in itertools.product(*axes)]


def _split_values(values: str) -> list[str]:
    out, depth, current = [], 0, ""
    for ch in values:
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += ch
    out.append(current)
    if any(not v for v in out):
        raise ValueError(f"empty value in sweep axis values {values!r}")
    return out


@dag(
    dag_id="fl_ext_pipeline",
    schedule=None,
    catchup=False,
    tags=["fl-ext"],
    doc_md=__doc__,
    default_args={"retries": 0},
    params={
        "project_root": Param(str(PROJECT_ROOT), type="string", description="fl-ext checkout"),
        "python": Param(
            "", type="string", description="project Python; empty: <project_root>/.venv/bin/python"
        ),
        "overrides": Param(
            "dataset=digits model=mlp num_rounds=2 local_epochs=1",
            type="string",
            description="Hydra overrides of every run (space separated)",
        ),
        "sweep": Param("seed=0,1", type="string", description="sweep axes: key=v1,v2 ..."),
        "num_supernodes": Param(10, type="integer", minimum=1, description="simulated nodes"),
        "registered_model": Param(
            "fl-ext-digits-mlp", type="string", description="registry name the runs register"
        ),
        "experiment": Param("", type="string", description="MLflow experiment; empty: per run"),
        "max_drop": Param(0.05, type="number", minimum=0, description="monitor: degraded above"),
        "fl_ext_home": Param("", type="string", description="FL_EXT_HOME; empty: inherited"),
        "mlflow_tracking_uri": Param("", type="string", description="empty: inherited"),
    },
)
def fl_ext_pipeline() -> None:  # noqa: PLR0915  (TaskFlow: the DAG defines its tasks)
    """Federated statistics, a training sweep, its evaluation, the best model, its monitoring."""

    @task
    def federated_stats() -> dict[str, Any]:
        params = _params()
        out = _workdir(params) / "stats.json"
        run_command(
            [
                "-m", "simulations.federated_stats",
                "--num-supernodes", str(params["num_supernodes"]),
                "--json", str(out),
                *data_overrides(_overrides(params)),
            ],
            params,
        )  # fmt: skip
        _read_json(out)
        return {"json": str(out)}

    @task
    def sweep_points() -> list[list[str]]:
        return expand_sweep(_params()["sweep"])

    @task(max_active_tis_per_dagrun=1)
    def train(point: list[str]) -> dict[str, Any]:
        params = _params()
        overrides = [
            *_overrides(params),
            *point,
            f"tracking.experiment={_experiment(params)}",
            f"tracking.registered_model_name={params['registered_model']}",
        ]
        lines = run_command(
            [
                "-m", "simulations.run",
                "--num-supernodes", str(params["num_supernodes"]),
                *overrides,
            ],
            params,
        )  # fmt: skip
        ended = [m for line in lines if (m := RUN_ENDED.search(line))]
        if not ended:
            raise CommandFailed("the run completed but printed no 'MLflow run <id> ended' line")
        return {"point": point, "mlflow_run_id": ended[-1].group(1)}

    @task
    def evaluate(trained: list[dict[str, Any]]) -> dict[str, Any]:
        params = _params()
        plot = _workdir(params) / "accuracy.png"
        lines = run_command(
            ["-m", "simulations.compare", "--experiment", _experiment(params), "--out", str(plot)],
            params,
        )
        table = "\n".join(line for line in lines if line.startswith("|"))
        return {"points": len(list(trained)), "table": table, "plot": str(plot)}

    @task
    def pick_best(trained: list[dict[str, Any]], evaluation: dict[str, Any]) -> dict[str, Any]:
        params = _params()
        out = _workdir(params) / "best.json"
        run_ids = [t["mlflow_run_id"] for t in trained]
        log.info("sweep of %d runs evaluated: plot %s", len(run_ids), evaluation["plot"])
        run_command(
            ["-c", PICK_BEST, params["registered_model"], json.dumps(run_ids), str(out)], params
        )
        best: dict[str, Any] = _read_json(out)
        return best

    @task
    def serve(best: dict[str, Any]) -> dict[str, Any]:
        params = _params()
        out = _workdir(params) / "serve.json"
        run_command(
            [
                "-m", "simulations.serve_check",
                "--model", f"{best['name']}@{best['alias']}",
                "--json", str(out),
                *data_overrides(_overrides(params)),
            ],
            params,
        )  # fmt: skip
        report: dict[str, Any] = _read_json(out)
        return report

    @task
    def monitor(best: dict[str, Any]) -> dict[str, Any]:
        params = _params()
        out = _workdir(params) / "monitor.json"
        run_command(
            [
                "-m", "simulations.monitor",
                "--model", f"{best['name']}@{best['alias']}",
                "--max-drop", str(params["max_drop"]),
                "--num-supernodes", str(params["num_supernodes"]),
                "--json", str(out),
                *_overrides(params),
            ],
            params,
        )  # fmt: skip
        verdict: dict[str, Any] = _read_json(out)
        if "degraded" not in verdict:
            raise CommandFailed(f"{out} has no 'degraded' verdict: {verdict}")
        version = verdict.get("version")
        if version is not None and str(version) != best["version"]:
            raise CommandFailed(
                f"monitored version {version}, but pick_best chose {best['version']} "
                f"(@best moved during the run?)"
            )
        if verdict["degraded"]:
            log.warning("%s v%s is DEGRADED: %s", best["name"], best["version"], verdict)
        else:
            log.info("%s v%s is healthy: %s", best["name"], best["version"], verdict)
        return {"version": best["version"], **verdict}

    stats = federated_stats()
    points = sweep_points()
    stats >> points
    trained = train.expand(point=points)
    best = pick_best(trained, evaluate(trained))
    serve(best)
    monitor(best)


pipeline = fl_ext_pipeline()


def main(argv: list[str] | None = None) -> int:
    """One DAG run without a scheduler (``dag.test()``); prints a JSON line of task states.

    Creates or migrates the Airflow metadata DB first (``AIRFLOW_HOME``, or
    ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``); the DAG folder is this file's unless
    ``AIRFLOW__CORE__DAGS_FOLDER`` says otherwise. Exit code 0 when the DAG run succeeded.
    """
    import argparse

    parser = argparse.ArgumentParser(description="Run fl_ext_pipeline once with dag.test().")
    parser.add_argument("--conf", default="{}", help='JSON params, e.g. \'{"sweep": ""}\'')
    parser.add_argument("--mark-success", default=None, help="regex of task ids not to run")
    parser.add_argument("--json", type=Path, default=None, help="also write the states here")
    args = parser.parse_args(argv)

    from airflow.utils import db

    db.initdb()
    dag_run = pipeline.test(run_conf=json.loads(args.conf), mark_success_pattern=args.mark_success)
    states: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        states.setdefault(ti.task_id, []).append(str(ti.state))
    summary = {"dag_run": str(dag_run.state), "run_id": dag_run.run_id, "tasks": states}
    print("DAG_TEST_RESULT " + json.dumps(summary), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if str(dag_run.state) == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
