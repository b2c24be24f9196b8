"""simulations.compare: one row and one line per MLflow run, even when names repeat; the FL
figures of several experiments side by side; the comparison logged to MLflow as a run."""

import csv
import io
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.image
from mlflow.tracking import MlflowClient

from fl_ext.tracking import MlflowTracker, default_artifact_root, metric_key, resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.compare import (
    NoRunsToCompare,
    compare,
    experiment_names,
    main,
    run_comparison,
    summarize,
)
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

PNG = b"\x89PNG\r\n\x1a\n"


def _tracked(uri, name, curve):
    tracker = MlflowTracker(uri=uri, experiment="cmp")
    tracker.start(run_name=name, params={"seed": 0}, tags={"choice.strategy": "fedavg"})
    for rnd, acc in curve.items():
        tracker.log_metrics(rnd, {"test_accuracy": acc, "bytes_up_cum": 1e6 * rnd})
    tracker.end("FINISHED")
    return tracker.run_id


def test_runs_with_one_name_stay_apart(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    curve = {0: 0.1, 1: 0.5, 2: 0.7}
    ids = [_tracked(uri, "fedavg-digits-iid-mlp-seed0", curve) for _ in range(3)]
    ids.append(_tracked(uri, "fedavg-digits-iid-mlp-seed0 lr=0.1", {0: 0.1, 1: 0.6}))
    rows, table, plot = compare("cmp", uri=uri, out=tmp_path / "acc.png")
    assert [r.run_id for r in rows] == ids
    labels = [r.label for r in rows]
    assert len(set(labels)) == 4 and labels[3] == "fedavg-digits-iid-mlp-seed0 lr=0.1"
    assert labels[0] == f"fedavg-digits-iid-mlp-seed0 #{ids[0][:8]}"
    assert rows[0].final_accuracy == 0.7 and rows[0].rounds == 2 and rows[0].mb_up == 2.0
    body = table.splitlines()[2:]
    assert len(body) == 4 and all(f"| {i[:8]} |" in line for i, line in zip(ids, body))
    assert matplotlib.image.imread(plot).shape[0] > 100
    assert main(["--experiment", "cmp", "--uri", uri, "--out", str(tmp_path / "b.png")]) == 0
    assert "accuracy plot:" in capsys.readouterr().out


def test_runs_logged_with_the_old_flat_names_are_still_read(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("cmp"), run_name="old")
    for rnd, acc in {0: 0.1, 1: 0.4}.items():
        client.log_metric(run.info.run_id, "test_accuracy", acc, step=rnd)
    client.log_metric(run.info.run_id, "bytes_up_cum", 3e6, step=1)
    client.set_terminated(run.info.run_id)
    (row,), _, _ = compare("cmp", uri=uri, out=tmp_path / "acc.png")
    assert row.curve == {0: 0.1, 1: 0.4} and row.mb_up == 3.0 and row.label == "old"


# ---------------------------------------------------------------- FL figures, several experiments

HASH = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def _client_run(client, experiment_id, name, *, metrics, tags, params=None):
    """A finished run logged with MlflowClient directly: ``metrics`` is {key: {step: value}}."""
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    for key, steps in metrics.items():
        for step, value in steps.items():
            client.log_metric(run_id, key, value, step=step)
    for key, value in (params or {}).items():
        client.log_param(run_id, key, value)
    client.set_terminated(run_id)
    return run_id


def _two_experiments(uri):
    """sweep-a: a DP run with every figure; sweep-b: the same name, no DP, another dataset."""
    client = MlflowClient(uri)
    root = default_artifact_root(uri)
    a = client.create_experiment("sweep-a", artifact_location=root)
    b = client.create_experiment("sweep-b", artifact_location=root)
    accuracy = {0: 0.1, 1: 0.5, 2: 0.8, 3: 0.7}
    full = _client_run(
        client,
        a,
        "fedavg-digits-iid-mlp-seed0",
        metrics={
            metric_key("test_accuracy"): accuracy,
            metric_key("bytes_up_cum"): {1: 1e6, 2: 2.5e6, 3: 4e6},
            metric_key("bytes_down_cum"): {1: 2e6, 2: 4e6, 3: 6e6},
            metric_key("dp_epsilon_client_level"): {1: 0.5, 2: 1.0, 3: 1.5},
            metric_key("dp_epsilon_sample_level_max"): {1: 2.0, 2: 3.0, 3: 4.25},
            metric_key("clients_rejected"): {1: 1, 2: 0, 3: 2},
            metric_key("time_to_target_s"): {2: 12.5},
            metric_key("sim_time_to_target_s"): {2: 40.0},
        },
        tags={
            "dataset_version": "rev:abc1234 md5:0f3e9a",
            "choice.strategy": "fedavg",
            "choice.dataset": "digits",
        },
        params={"seed": "0"},
    )
    plain = _client_run(
        client,
        b,
        "fedavg-digits-iid-mlp-seed0",
        metrics={
            metric_key("test_accuracy"): {0: 0.1, 1: 0.6},
            metric_key("bytes_up_cum"): {1: 3e6},
            metric_key("bytes_down_cum"): {1: 3e6},
        },
        tags={"dataset_version": "rev:def5678 md5:77aa01", "choice.strategy": "fedavg"},
    )
    hashed = _client_run(
        client,
        b,
        "fedprox-digits-iid-mlp-seed0",
        metrics={metric_key("test_accuracy"): {0: 0.1, 1: 0.55}},
        tags={"dataset.hash": HASH},  # what simulations.run_loop sets
    )
    return client, [full, plain, hashed]


def _cells(table):
    """The markdown table's body as dicts keyed by column name."""
    header, _, *body = table.splitlines()
    names = [c.strip() for c in header.strip("|").split("|")]
    return [dict(zip(names, (c.strip() for c in line.strip("|").split("|")))) for line in body]


def _compare_runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`fl_ext.kind` = 'compare'")


def test_fl_figures_of_two_experiments_side_by_side(tmp_path):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    _, ids = _two_experiments(uri)
    found = run_comparison(["sweep-a", "sweep-b"], uri=uri, out=tmp_path / "plots" / "acc.png")
    assert [r.run_id for r in found.rows] == ids and found.mlflow_run_id is None
    full, plain, hashed = _cells(found.table)
    assert [full["experiment"], plain["experiment"], hashed["experiment"]] == [
        "sweep-a",
        "sweep-b",
        "sweep-b",
    ]
    assert (full["final acc"], full["best acc"], full["rounds"]) == ("0.7000", "0.8000", "3")
    assert (full["eps client"], full["eps sample"]) == ("1.500", "4.250")  # last values
    assert (full["MB up"], full["MB down"]) == ("4.00", "6.00")
    assert full["rejected"] == "3"  # summed over rounds
    assert (full["to target s"], full["sim to target s"]) == ("12.5", "40.0")
    # a run without DP, target or rejection metrics: '-' rather than a made-up 0
    for column in ("eps client", "eps sample", "rejected", "to target s", "sim to target s"):
        assert plain[column] == "-" and hashed[column] == "-"
    assert hashed["MB up"] == "-"
    # the dataset version is visible, and differs between the two runs of one name
    assert full["data"] == "rev:abc1234 md5:0f3e9a"
    assert plain["data"] == "rev:def5678 md5:77aa01"
    assert hashed["data"] == HASH[:12]
    # same run name in two experiments: labels say which experiment
    labels = [r.label for r in found.rows]
    assert labels[:2] == [
        "sweep-a: fedavg-digits-iid-mlp-seed0",
        "sweep-b: fedavg-digits-iid-mlp-seed0",
    ]
    # accuracy vs MB: round 0 at 0 MB, then the cumulative upload of each round
    assert found.rows[0].mb_curve == [(0.0, 0.1), (1.0, 0.5), (2.5, 0.8), (4.0, 0.7)]
    assert found.rows[2].mb_curve == []  # no bytes logged: not on the MB plot
    # the CSV keeps full run ids and precision, empty cells where a figure is absent
    rows = list(csv.DictReader(io.StringIO(found.csv)))
    assert rows[0]["run id"] == ids[0] and rows[0]["eps sample"] == "4.25"
    assert rows[1]["rejected"] == "" and rows[2]["data"] == HASH[:12]
    assert found.csv_path.read_text() == found.csv
    for path in found.plots.values():
        assert path.read_bytes()[:8] == PNG and matplotlib.image.imread(path).shape[0] > 100
    assert set(found.plots) == {"accuracy_vs_round.png", "accuracy_vs_mb.png"}


def test_comparison_is_logged_to_mlflow_and_skipped_next_time(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client, ids = _two_experiments(uri)
    out = tmp_path / "acc.png"
    assert main(["--experiment", "sweep-a,sweep-b", "--uri", uri, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    (logged,) = _compare_runs(client, "sweep-a")
    assert logged.info.run_name == "compare" and logged.info.status == "FINISHED"
    assert logged.data.tags["compare.experiments"] == "sweep-a,sweep-b"
    assert logged.info.run_id in printed
    names = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert names == {
        "comparison.md",
        "comparison.csv",
        "accuracy_vs_round.png",
        "accuracy_vs_mb.png",
    }
    local = Path(client.download_artifacts(logged.info.run_id, "", str(tmp_path / "dl")))
    table = (local / "comparison.md").read_text().strip()
    assert table in printed and len(_cells(table)) == 3
    logged_rows = list(csv.DictReader((local / "comparison.csv").open()))
    assert [r["run id"] for r in logged_rows] == ids
    for png in ("accuracy_vs_round.png", "accuracy_vs_mb.png"):
        assert (local / png).read_bytes()[:8] == PNG
        assert matplotlib.image.imread(local / png).shape[0] > 100
    # the next comparison does not list the compare run; --no-log logs nothing
    args = ["--experiment", "sweep-a", "--experiment", "sweep-b", "--uri", uri, "--no-log"]
    assert main([*args, "--out", str(tmp_path / "again.png")]) == 0
    assert len(_compare_runs(client, "sweep-a")) == 1
    again = run_comparison(["sweep-a", "sweep-b"], uri=uri, out=tmp_path / "b.png")
    assert [r.run_id for r in again.rows] == ids


def test_experiment_names_repeat_or_comma_separate():
    assert experiment_names(["a,b", "c", " b ,d,"]) == ["a", "b", "c", "d"]


def test_unknown_and_empty_experiments_are_clear_errors(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    _two_experiments(uri)
    with pytest.raises(SystemExit, match=r"'nope'.*m\.db") as err:
        summarize(["sweep-a", "nope"], uri)
    assert "sweep-a" not in str(err.value)
    client = MlflowClient(uri)
    client.create_experiment("empty", artifact_location=default_artifact_root(uri))
    assert main(["--experiment", "sweep-a,empty", "--uri", uri, "--no-log"]) == 1
    assert "'empty'" in capsys.readouterr().err
    # an experiment holding only earlier comparisons has nothing to compare either
    assert main(["--experiment", "sweep-a", "--uri", uri, "--out", str(tmp_path / "a.png")]) == 0
    only = client.get_experiment_by_name("sweep-a").experiment_id
    for found in client.search_runs([only]):
        if found.data.tags.get("fl_ext.kind") != "compare":
            client.delete_run(found.info.run_id)
    with pytest.raises(NoRunsToCompare, match="no runs to compare"):
        summarize("sweep-a", uri)


@pytest.mark.slow
def test_a_real_project_run_is_compared_and_logged(tmp_path):
    overrides = ["dataset=digits", "model=mlp", "num_rounds=2", "fraction_evaluate=0.0"]
    built = build(compose_experiment([*overrides, "local_epochs=1"]))
    run(InProcessGrid(client_app, 3), built)
    found = run_comparison("fl-ext", out=tmp_path / "acc.png", log=True)
    (row,) = found.rows
    (cells,) = _cells(found.table)
    assert row.status == "FINISHED" and row.rounds == 2
    assert row.final_accuracy == built.history[2]
    tags = MlflowClient(resolve_tracking_uri()).get_run(row.run_id).data.tags
    # the run's dataset_version tag where the project sets it, else its dataset hash
    assert row.data == cells["data"] == tags.get("dataset_version", built.split.content_hash[:12])
    assert built.split.content_hash[:12] in row.data  # digits: versioned by its content hash
    assert row.mb_up > 0 and row.mb_down > 0 and row.rejected == 0
    assert cells["eps client"] == "-" and cells["dataset"] == "digits"
    xs = [x for x, _ in row.mb_curve]
    assert xs[0] == 0.0 and xs == sorted(xs) and xs[-1] == row.mb_up and len(xs) == 3
    client = MlflowClient(resolve_tracking_uri())
    (logged,) = _compare_runs(client, "fl-ext")
    assert logged.info.run_id == found.mlflow_run_id
    assert [r.run_id for r in run_comparison("fl-ext", out=tmp_path / "b.png").rows] == [row.run_id]
