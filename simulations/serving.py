"""Serve a registered model with ``mlflow models serve`` on loopback, talk to it, stop it.

The server is MLflow's own (uvicorn, started by name from this interpreter's ``bin``), in its
own process group, so stopping it stops its workers too. Starting is bounded: a server that
exits or never answers ``/ping`` is an error carrying its log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import numpy as np


class ServeError(RuntimeError):
    """The model server did not start, or answered a good request with an error."""


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(url: str, body: bytes | None = None, *, timeout: float = 30.0) -> tuple[int, bytes]:
    """(status, body) of a GET (no body) or a JSON POST; HTTP errors are replies, not raises."""
    req = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json"} if body is not None else {},
        method="POST" if body is not None else "GET",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


class ModelServer:
    """``with ModelServer("models:/name@best", tracking_uri=...) as server: server.predict(x)``."""

    def __init__(
        self, model_uri: str, *, tracking_uri: str, port: int | None = None, start_s: float = 120.0
    ) -> None:
        if not start_s > 0:
            raise ValueError(f"start_s must be > 0, got {start_s}")
        self.model_uri, self.tracking_uri = model_uri, tracking_uri
        self.port = port or free_port()
        self.start_s = float(start_s)
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix="fl-ext-serve-", suffix=".log")[1])

    def __enter__(self) -> ModelServer:
        bin_dir = str(Path(sys.executable).parent)
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        command = [
            *(f"{bin_dir}/mlflow", "models", "serve", "-m", self.model_uri),
            *("--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port)),
        ]
        with self._log.open("wb") as out:
            self.process = subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's output (for error messages)."""
        return self._log.read_text(errors="replace")[-chars:] if self._log.exists() else ""

    def _wait_until_up(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.start_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(
                    f"mlflow models serve exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                if request(f"{self.base}/ping", timeout=5)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise ServeError(
            f"the model server did not answer in {self.start_s:.0f} s:\n{self.log_tail()}"
        )

    def invoke(self, body: bytes) -> tuple[int, bytes]:
        """POST ``body`` to ``/invocations``: (status, reply body)."""
        return request(f"{self.base}/invocations", body)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The served model's predictions for ``x``; ServeError on an error reply."""
        status, body = self.invoke(json.dumps({"inputs": np.asarray(x).tolist()}).encode())
        if status != 200:
            raise ServeError(f"the model server answered {status}: {body[:2000]!r}")
        return np.asarray(json.loads(body)["predictions"], dtype=np.float64)

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM the server's process group (mlflow -> uvicorn workers), then SIGKILL."""
        if self.process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)  # start_new_session: group id = its pid
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=30)
                os.killpg(self.process.pid, 0)  # anything left in the group (a worker)?
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
            time.sleep(1.0)
        self._log.unlink(missing_ok=True)
        self.process = None
