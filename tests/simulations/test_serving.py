"""A registered model served by ``mlflow models serve`` answers as the loaded pyfunc does.

Trains a tiny real model through the project (in-process grid, real MLflow registry in sqlite),
serves ``models:/fl-ext-digits-mlp@best`` over HTTP on loopback and checks the served logits
against ``mlflow.pyfunc.load_model(...).predict`` on held-out digits, that a malformed request
gets a 4xx reply while the server keeps answering, and that ``simulations.serve_check`` (the
pipeline's serving task) says the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fl_ext.tracking import resolve_tracking_uri
from simulations import serve_check
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run
from simulations.serving import ModelServer, ServeError

NAME = "fl-ext-digits-mlp"
DATA = ["dataset=digits", "model=mlp"]
OVERRIDES = [*DATA, "num_rounds=2", "fraction_evaluate=0.0", "local_epochs=1"]


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

    with ModelServer(f"models:/{NAME}@best", tracking_uri=uri) as server:
        served = server.predict(images)
        assert served.shape == expected.shape
        np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
        assert (served.argmax(1) == expected.argmax(1)).all()

        # a wrong-shaped input is the client's error: a 4xx reply, and the server lives on
        status, body = server.invoke(json.dumps({"inputs": [[1.0, 2.0, 3.0]]}).encode())
        assert 400 <= status < 500, (status, body[:2000])
        error = json.loads(body)
        assert error["error_code"] == "INVALID_PARAMETER_VALUE" and "shape" in error["message"]
        status, body = server.invoke(b"{not json")
        assert 400 <= status < 500, (status, body[:2000])
        assert json.loads(body)["error_code"] == "BAD_REQUEST"
        with pytest.raises(ServeError, match="answered 400"):
            server.predict(np.zeros((1, 3)))
        np.testing.assert_allclose(server.predict(images), expected, rtol=1e-5, atol=1e-6)
        assert server.alive()
        process = server.process
    assert process is not None and process.poll() is not None  # stopped on exit

    report_path = tmp_path / "serve.json"
    lines: list[str] = []
    code = serve_check.main(
        ["--model", f"{NAME}@best", "--requests", "20", "--json", str(report_path), *DATA],
        write=lines.append,
    )
    assert code == 0, lines
    report = json.loads(report_path.read_text())
    assert report["agree"] and report["requests"] == 20 and report["version"] == str(best.version)
    twenty = np.ascontiguousarray(built.split.test.x[:20], dtype=np.float32)
    want = (np.asarray(reference.predict(twenty)).argmax(1) == built.split.test.y[:20]).mean()
    assert report["served_accuracy"] == pytest.approx(float(want))
    assert "predictions agree with pyfunc" in lines[-1]


def test_serve_check_refuses_a_bad_model_reference() -> None:
    lines: list[str] = []
    assert serve_check.main(["--model", "no-version", *DATA], write=lines.append) == 2
    assert "NAME@ALIAS or NAME/VERSION" in lines[0]
    assert serve_check.main(["--model", "nope@best", *DATA], write=lines.append) == 2
    assert "not in the registry" in lines[1]
