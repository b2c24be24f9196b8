"""The robustness-matrix driver on a 2 x 2 slice (digits, 2 rounds)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_matrix_slice_writes_table_heatmap_and_mlflow_runs(tmp_path):
    env = {**os.environ, "FL_EXT_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.robustness",
            "dataset=digits",
            "model=mlp",
            "num_rounds=2",
            "+scenario=iid",  # command-line sweeps replace the matrix's own dimensions
            "aggregator=mean,bulyan",
            "preagg=[]",
            "attack=none,sign_flip",
            f"robustness.out_dir={tmp_path / 'out'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    table = (tmp_path / "out" / "robustness.md").read_text()
    assert "| rule | none | sign_flip | worst |" in table
    assert "| bulyan | n/a | n/a | n/a |" in table  # 13 nodes < 4f + 3 = 15
    mean_row = next(line for line in table.splitlines() if line.startswith("| mean |"))
    none_acc, flip_acc = (float(v) for v in mean_row.split("|")[2:4])
    assert none_acc > 0.5 and flip_acc < none_acc
    assert (tmp_path / "out" / "robustness.png").stat().st_size > 5000
    client = MlflowClient(f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("robustness")
    assert len(client.search_runs([exp.experiment_id])) == 4
