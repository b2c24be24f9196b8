"""A registered model served by ``mlflow models serve`` answers as the loaded pyfunc does.

Trains a tiny real model through the project (in-process grid, real MLflow registry in sqlite),
serves ``models:/fl-ext-digits-mlp@best`` over HTTP on loopback and checks the served logits
against ``mlflow.pyfunc.load_model(...).predict`` on held-out digits, and that a malformed
request gets a 4xx reply while the server keeps answering.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fl_ext.tracking import resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

NAME = "fl-ext-digits-mlp"
OVERRIDES = [
    "dataset=digits",
    "model=mlp",
    "num_rounds=2",
    "fraction_evaluate=0.0",
    "local_epochs=1",
]
START_LIMIT_S = 120.0  # model loading + uvicorn start; bounded so a broken server fails the test


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    """(status, body) of a GET (no body) or a JSON POST; HTTP errors are replies, not raises."""
    req = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json"} if body is not None else {},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def _wait_until_up(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"server exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if _request(f"{base}/ping")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"server not up after {START_LIMIT_S:.0f} s:\n{log.read_text()[-4000:]}")


def _predictions(body: bytes) -> np.ndarray:
    return np.asarray(json.loads(body)["predictions"], dtype=np.float64)


@pytest.mark.slow
def test_served_best_model_predicts_as_the_loaded_model(tmp_path: Path) -> None:
    built = build(compose_experiment(OVERRIDES))
    run(InProcessGrid(client_app, 4), built)
    uri = resolve_tracking_uri()
    client = MlflowClient(uri)
    best = client.get_model_version_by_alias(NAME, "best")
    reference = mlflow.pyfunc.load_model(client.get_model_version_download_uri(NAME, best.version))

    images = np.ascontiguousarray(built.split.test.x[:16], dtype=np.float32)
    assert images.shape == (16, 1, 8, 8)  # the README's contract: float32 [n, 1, H, W]
    expected = np.asarray(reference.predict(images), dtype=np.float64)
    assert expected.shape == (16, 10)

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    venv_bin = str(Path(sys.executable).parent)  # MLflow starts uvicorn by name
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = [
        *(f"{venv_bin}/mlflow", "models", "serve", "-m", f"models:/{NAME}@best"),
        *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)),
    ]
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_up(base, server, log)
        good = json.dumps({"inputs": images.tolist()}).encode()
        status, body = _request(f"{base}/invocations", good)
        assert status == 200, body[:2000]
        served = _predictions(body)
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
        assert (served.argmax(1) == expected.argmax(1)).all()

        # a wrong-shaped input is the client's error: a 4xx reply, and the server lives on
        bad = json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode()
        status, body = _request(f"{base}/invocations", bad)
        assert 400 <= status < 500, (status, body[:2000])
        error = json.loads(body)
        assert error["error_code"] == "INVALID_PARAMETER_VALUE" and "shape" in error["message"]
        status, body = _request(f"{base}/invocations", b"{not json")
        assert 400 <= status < 500, (status, body[:2000])
        assert json.loads(body)["error_code"] == "BAD_REQUEST"

        status, body = _request(f"{base}/invocations", good)
        assert status == 200 and server.poll() is None
        np.testing.assert_allclose(_predictions(body), expected, rtol=1e-5, atol=1e-6)
    finally:
        _stop_group(server)


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's whole process group (mlflow -> uvicorn workers), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)  # start_new_session: the group id is the server's pid
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=30)
            os.killpg(server.pid, 0)  # anything left in the group (a worker)?
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1.0)
