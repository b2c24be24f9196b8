"""Serve a registered model over HTTP and check it answers as the registry's copy does.

    python -m simulations.serve_check --model fl-ext-digits-mlp@best dataset=digits model=mlp
    python -m simulations.serve_check --model fl-ext-mnist5k-cnn/2 --requests 64 --json serve.json

Starts ``mlflow models serve`` for the version on 127.0.0.1 (a free port), sends ``--requests``
held-out images of the configured dataset (the overrides name it, as for training), compares
the served logits with ``mlflow.pyfunc`` on the same images, reports the served accuracy on
them, and stops the server. Exit: 0 when they agree, 1 when they differ or the server fails,
2 for a bad config or model reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simulations.config import ConfigError, compose_experiment
from simulations.serving import ModelServer, ServeError
from simulations.task_runs import registered_version, tracking_uri, write_json


def check(ref: str, overrides: list[str], *, requests: int, start_s: float) -> dict[str, Any]:
    """Serve ``ref``, compare with pyfunc on ``requests`` held-out images; the report."""
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    from fl_ext.data.federated import load_split
    from fl_ext.specs import spec_to_json

    uri = tracking_uri(overrides)
    experiment = compose_experiment(overrides)
    split = load_split(spec_to_json(experiment.resolved()["dataset"]))
    x = np.ascontiguousarray(split.test.x[:requests], dtype=np.float32)
    y = split.test.y[:requests]
    client = MlflowClient(uri)
    version = registered_version(client, ref, setting="--model")
    reference = mlflow.pyfunc.load_model(
        client.get_model_version_download_uri(version.name, version.version)
    )
    expected = np.asarray(reference.predict(x), dtype=np.float64)
    started = time.monotonic()
    with ModelServer(f"models:/{ref}", tracking_uri=uri, start_s=start_s) as server:
        up_s = time.monotonic() - started
        t0 = time.monotonic()
        served = server.predict(x)
        request_s = time.monotonic() - t0
    same_shape = served.shape == expected.shape
    agree = same_shape and bool(np.allclose(served, expected, rtol=1e-5, atol=1e-6))
    return {
        "model": version.name,
        "version": str(version.version),
        "requests": int(x.shape[0]),
        "agree": agree,
        "max_abs_diff": float(np.max(np.abs(served - expected))) if same_shape else None,
        "served_accuracy": float((served.argmax(1) == y).mean()) if served.ndim == 2 else 0.0,
        "start_s": up_s,
        "request_s": request_s,
    }


def main(argv: list[str] | None = None, *, write: Callable[[str], None] = print) -> int:
    """The command line; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.serve_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides naming the dataset")
    parser.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION")
    parser.add_argument("--requests", type=int, default=32, help="held-out images to send")
    parser.add_argument("--start-timeout", type=float, default=120.0, help="seconds")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    if args.requests < 1:
        parser.error(f"--requests must be >= 1, got {args.requests}")
    try:
        report = check(
            args.model, args.overrides, requests=args.requests, start_s=args.start_timeout
        )
    except (ConfigError, ValueError) as err:
        write(f"Configuration error: {err}")
        return 2
    except ServeError as err:
        write(f"Serving failed: {err}")
        return 1
    write_json(args.json, report)
    verdict = "agree" if report["agree"] else "DIFFER"
    write(
        f"{report['model']} v{report['version']} served on 127.0.0.1: {report['requests']} "
        f"requests, predictions {verdict} with pyfunc (max |diff| {report['max_abs_diff']}), "
        f"served accuracy {report['served_accuracy']:.4f}; up in {report['start_s']:.1f} s"
    )
    return 0 if report["agree"] else 1


if __name__ == "__main__":
    sys.exit(main())
