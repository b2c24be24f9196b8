"""A simulation SuperLink on 127.0.0.1 that we start, own by PID and stop.

``flwr run`` would start a detached SuperLink on fixed ports and leave it running, with the
environment of whichever shell started it first. Tests and sweeps start their own on free
ports (``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` / ``FLWR_LOCAL_CONTROL_API_PORT`` make ``flwr``
use it), with a private ``FLWR_HOME``, and stop exactly that process on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

QUIET_ENV = {
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flwr_bin(name: str) -> str:
    """Path of a Flower executable next to this interpreter (the venv's bin), else on PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"'{name}' not found next to {sys.executable} or on PATH")
    return found


def stop_process_group(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    """SIGTERM the group ``process`` leads (started with ``start_new_session``), then SIGKILL.

    Only the group of a process we started is signalled: never anything found by name.
    """
    if process is None or process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=timeout)
    try:  # children left in the group (ServerApp/ClientApp processes)
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``check`` until it is true; TimeoutError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


class OwnedProcesses:
    """Context manager for things that ``start()`` processes and ``stop()`` them by PID."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class LocalSuperLink(OwnedProcesses):
    """Start ``flower-superlink --simulation`` on free loopback ports; stop it by PID."""

    def __init__(
        self,
        flwr_home: Path,
        *,
        extra_env: dict[str, str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self.flwr_home = Path(flwr_home).resolve()
        self.http_port = free_port()
        self.control_port = free_port()
        self.startup_timeout = startup_timeout
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            **QUIET_ENV,
            **(extra_env or {}),
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(self.http_port),
            "FLWR_LOCAL_CONTROL_API_PORT": str(self.control_port),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        """The SuperLink's own log."""
        return self.flwr_home / "superlink.log"

    def start(self) -> LocalSuperLink:
        """Launch and wait until its health endpoint answers."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        command = [
            flwr_bin("flower-superlink"),
            "--insecure",
            "--simulation",
            "--isolation",
            "subprocess",
            "--control-api-address",
            f"127.0.0.1:{self.control_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.http_port),
            "--database",
            str(self.flwr_home / "state.db"),
            "--log-file",
            str(self.log_file),
        ]
        self.process = subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"flower-superlink exited with code {code}; see {self.log_file}")
            if self._healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"SuperLink did not start in {self.startup_timeout:.0f}s; see {self.log_file}"
        )

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/health", timeout=0.5
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """Stop our SuperLink and its process group (the simulation it spawned), by PID."""
        stop_process_group(self.process, timeout)
