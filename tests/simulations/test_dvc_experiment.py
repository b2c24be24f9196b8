"""A federation on a DVC-versioned dataset: pinned commit, data versions in MLflow, two runs apart.

Real git + DVC repo with a local remote (no network); real ClientApps on the in-process grid;
real MLflow in the test's tmp home.
"""

import pytest
from mlflow.tracking import MlflowClient

from fl_ext.data.dvc_export import init_repo, update_repo
from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _dvc_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("DVC_SITE_CACHE_DIR", str(tmp_path / "dvc-site"))


def _run(repo, rev, nodes=3):
    overrides = [
        "dataset=dvc", f"dataset.repo={repo}", "dataset.path=data/digits.npz",
        f"dataset.rev={rev}", "dataset.num_classes=10", "model=mlp", "num_rounds=1",
        "local_epochs=1", "fraction_evaluate=0.0",
    ]  # fmt: skip
    built = build(compose_experiment(overrides))
    run(InProcessGrid(client_app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name("fl-ext")
    (found,) = client.search_runs([exp.experiment_id], max_results=1, order_by=["start_time DESC"])
    return built, client, found


def test_two_dataset_versions_are_recorded_apart_and_clients_read_the_pinned_commit(tmp_path):
    repo = tmp_path / "fl-data"
    v1 = init_repo(repo, dataset="digits", remote=tmp_path / "remote")
    built1, client, run1 = _run(repo, _branch(repo))
    assert f'"rev": "{v1.commit}"' in str(built1.train_config["dataset-spec"])  # branch pinned
    tag1 = run1.data.tags["dataset_version"]
    assert tag1 == f"md5:{v1.md5[:12]}@{v1.commit[:12]}"
    inputs = run1.inputs.dataset_inputs
    contexts = sorted(t.value for d in inputs for t in d.tags)
    assert contexts == ["evaluation", "training", "training", "training"]
    server = next(d.dataset for d in inputs if d.tags[0].value == "evaluation")
    assert server.source == f"dvc:{repo}:data/digits.npz"

    v2 = update_repo(repo, transform="subsample=0.5")
    _built2, client, run2 = _run(repo, v2.commit)
    tag2 = run2.data.tags["dataset_version"]
    assert tag2 == f"md5:{v2.md5[:12]}@{v2.commit[:12]}" and tag2 != tag1
    assert run2.data.tags["client_data"] != run1.data.tags["client_data"]
    (version,) = client.search_model_versions(f"run_id = '{run2.info.run_id}'")
    assert version.tags["dataset_version"] == tag2


def _branch(repo):
    from fl_ext.data.dvc_export import git

    return git(repo, "rev-parse", "--abbrev-ref", "HEAD")
