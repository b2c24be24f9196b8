"""Shared fixtures; every test keeps Flower, MLflow and fl-ext state in its own tmp dirs."""

from __future__ import annotations

import os
from pathlib import Path

import numba
import pytest
import torch

for key, value in {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}.items():
    os.environ.setdefault(key, value)

if os.environ.get("PYTEST_XDIST_WORKER"):  # two workers on two cores: one thread each, or
    torch.set_num_threads(1)  # both oversubscribe (numba's parallel kernels slowed 40x so)
    numba.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FL_EXT_HOME and FLWR_HOME inside the test's tmp dir; no MLflow URI from outside."""
    monkeypatch.setenv("FL_EXT_HOME", str(tmp_path / "fl-ext-home"))
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
