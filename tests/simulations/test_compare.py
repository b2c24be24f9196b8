"""simulations.compare: one row and one line per MLflow run, even when names repeat."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
from mlflow.tracking import MlflowClient

from fl_ext.tracking import MlflowTracker
from simulations.compare import compare, main


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
