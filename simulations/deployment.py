"""A real Flower deployment on this machine, started, owned and stopped by PID.

A SuperLink with TLS and SuperNode authentication and N SuperNodes with their data partitions.

The processes are the ones a team runs on separate machines (``flower-superlink``,
``flower-supernode``, ``flwr supernode register``, ``flwr run . <connection>``); only the
address is loopback. ``python -m simulations.deploy`` is the command-line front end.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from fl_ext.security import DeploymentMaterial
from simulations.local_superlink import (
    QUIET_ENV,
    OwnedProcesses,
    flwr_bin,
    free_port,
    stop_process_group,
    wait_until,
)

CONNECTION = "fl-ext-local"


def _timestamp_lines(process: subprocess.Popen[bytes], path: Path) -> None:
    """Copy the process's output to ``path``, each line prefixed with ``time.time()``."""
    assert process.stdout is not None
    with path.open("ab") as log_file:
        for line in process.stdout:
            log_file.write(f"{time.time():.3f} ".encode() + line)
            log_file.flush()


class LocalDeployment(OwnedProcesses):
    """SuperLink + ``num_nodes`` SuperNodes on 127.0.0.1.

    ``tls=False`` starts everything insecure (no node authentication either: Flower allows
    it only over TLS); it exists to measure what TLS costs. ``flwr_home`` receives the
    ``flwr`` connection ``CONNECTION`` (address + CA certificate), the SuperLink database
    and every process's log.
    """

    def __init__(
        self,
        flwr_home: str | Path,
        material: DeploymentMaterial,
        *,
        num_nodes: int,
        num_partitions: int | None = None,
        tls: bool = True,
        extra_env: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        if tls and material.num_nodes() < num_nodes:
            raise ValueError(
                f"{material.root} holds {material.num_nodes()} SuperNode key pairs, "
                f"{num_nodes} needed: generate more with `python -m simulations.deploy keys`"
            )
        self.flwr_home = Path(flwr_home).resolve()
        self.material = material
        self.num_nodes = num_nodes
        self.num_partitions = num_partitions or num_nodes
        self.tls = tls
        self.port = free_port()
        self.startup_timeout = startup_timeout
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            **QUIET_ENV,
            # SuperExec looks for new ClientApp/ServerApp tasks every 1 s by default
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
            **(extra_env or {}),
            "FLWR_HOME": str(self.flwr_home),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self.node_ids: list[int] = []

    @property
    def address(self) -> str:
        """The SuperLink's Fleet/Control/Runtime address (one HTTP port in Flower 1.41)."""
        return f"127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ start
    def start(self) -> LocalDeployment:
        """SuperLink, connection, node registration, SuperNodes; wait until all are online."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        try:
            self._start_superlink()
            self._write_connection()
            if self.tls:
                self.node_ids = [
                    self.register(self.material.node_public_key(i)) for i in range(self.num_nodes)
                ]
            for i in range(self.num_nodes):
                self.supernodes.append(self.start_supernode(i, partition_id=i))
            wait_until(
                lambda: self.online_count() >= self.num_nodes,
                self.startup_timeout,
                f"{self.num_nodes} SuperNodes online (logs in {self.flwr_home})",
                poll=0.5,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _start_superlink(self) -> None:
        security = (
            [
                "--ssl-ca-certfile", str(self.material.ca_cert),
                "--ssl-certfile", str(self.material.server_cert),
                "--ssl-keyfile", str(self.material.server_key),
                "--enable-supernode-auth",
            ]
            if self.tls
            else ["--insecure"]
        )  # fmt: skip
        command = [
            flwr_bin("flower-superlink"),
            *security,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--database", str(self.flwr_home / "superlink.db"),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        self.superlink = self._spawn(command, "superlink.log")
        wait_until(self._healthy, self.startup_timeout, f"SuperLink on {self.address}")

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        """Start ``command``; its output goes to ``log_name`` with a wall-clock time per line."""
        process = subprocess.Popen(
            command,
            env={**self.env, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        threading.Thread(
            target=_timestamp_lines, args=(process, self.flwr_home / log_name), daemon=True
        ).start()
        return process

    def _healthy(self) -> bool:
        if self.superlink is not None and self.superlink.poll() is not None:
            raise RuntimeError(
                f"flower-superlink exited with code {self.superlink.returncode}; "
                f"see {self.flwr_home / 'superlink.log'}"
            )
        scheme = "https" if self.tls else "http"
        context = (
            ssl.create_default_context(cafile=str(self.material.ca_cert)) if self.tls else None
        )
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.address}/health", timeout=0.5, context=context
            ) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _write_connection(self) -> None:
        """The ``flwr`` CLI connection: ``flwr run . fl-ext-local`` targets this SuperLink."""
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{self.address}"')
        if self.tls:
            lines.append(f"root-certificates = {json.dumps(str(self.material.ca_cert))}")
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n")

    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: the SuperLink then accepts the holder of that key."""
        result = self.flwr(["supernode", "register", str(public_key), CONNECTION])
        try:
            return int(json.loads(result.stdout)["node-id"])
        except (json.JSONDecodeError, KeyError, ValueError) as err:
            raise RuntimeError(
                f"registering {public_key} failed: {result.stdout[-500:]} {result.stderr[-500:]}"
            ) from err

    def start_supernode(
        self,
        index: int,
        *,
        partition_id: int,
        key: Path | None = None,
        insecure: bool = False,
        max_retries: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """One ``flower-supernode`` with node config ``partition-id``/``num-partitions``.

        ``key``/``insecure``/``max_retries`` let tests start nodes the SuperLink must refuse.
        """
        secure = not insecure and self.tls
        command = [
            flwr_bin("flower-supernode"),
            "--superlink", self.address,
            "--node-config", f"partition-id={partition_id} num-partitions={self.num_partitions}",
            "--port", str(free_port()),
        ]  # fmt: skip
        if secure:
            command += ["--root-certificates", str(self.material.ca_cert)]
            command += ["--auth-supernode-private-key", str(key or self.material.node_key(index))]
        else:
            command.append("--insecure")
        if max_retries is not None:
            command += ["--max-retries", str(max_retries), "--max-wait-time", "20"]
        return self._spawn(command, f"supernode-{index}.log")

    def flwr(self, args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this deployment (``--format json`` appended)."""
        return subprocess.run(
            [flwr_bin("flwr"), *args, "--format", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def nodes(self) -> list[dict[str, str]]:
        """``flwr supernode ls``: every registered node and its status."""
        if not self.tls:
            return []
        result = self.flwr(["supernode", "ls", CONNECTION])
        try:
            return list(json.loads(result.stdout).get("nodes", []))
        except json.JSONDecodeError:
            return []

    def online_count(self) -> int:
        """SuperNodes connected now (with TLS: online in ``flwr supernode ls``)."""
        dead = [p.args for p in self.supernodes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"a SuperNode exited; see the supernode-*.log in {self.flwr_home}")
        if not self.tls:  # no node listing without authentication: trust the live processes
            return len(self.supernodes)
        return sum(1 for n in self.nodes() if n.get("status") == "online")

    # ------------------------------------------------------------------- stop
    def stop(self) -> None:
        """SuperNodes first, then the SuperLink (and what each spawned), by process group."""
        for process in self.supernodes:
            stop_process_group(process)
        self.supernodes = []
        stop_process_group(self.superlink)
        self.superlink = None
