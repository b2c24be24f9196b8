"""A real Flower deployment on this machine, started, owned and stopped by PID.

A SuperLink with TLS and SuperNode authentication and N SuperNodes with their data partitions.

The processes are the ones a team runs on separate machines (``flower-superlink``,
``flower-supernode``, ``flwr supernode register``, ``flwr run . <connection>``); only the
address is loopback. ``python -m simulations.deploy`` is the command-line front end.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fl_ext.security import DeploymentMaterial
from simulations.local_superlink import (
    QUIET_ENV,
    OwnedProcesses,
    flwr_bin,
    free_port,
    stop_process_group,
)

CONNECTION = "fl-ext-local"
# log lines worth showing when a process failed or a wait timed out
_RELEVANT = re.compile(
    r"ERROR|CRITICAL|Traceback|Exception|error:|failed|refused|denied|not valid|certificate|"
    r"unauthori[sz]ed|invalid",
    re.IGNORECASE,
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_excerpt(path: Path, *, lines: int = 6) -> str:
    """The last ``lines`` relevant lines of a process log (errors, TLS, refusals), else its tail.

    The wall-clock prefix ``_timestamp_lines`` adds and colour codes are dropped.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"{path.name}: (no log)"
    cleaned = [
        _ANSI.sub("", re.sub(r"^\d+\.\d{3} ", "", line)).strip() for line in text.splitlines()
    ]
    cleaned = [line for line in cleaned if line]
    picked = [line for line in cleaned if _RELEVANT.search(line)] or cleaned
    if not picked:
        return f"{path.name}: (empty)"
    return f"{path.name}:\n  " + "\n  ".join(line[:400] for line in picked[-lines:])


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
    ``flwr`` connection ``CONNECTION`` (address + CA certificate) and every process's log.

    Each start is a fresh deployment: the SuperLink keeps its state (registered node keys,
    runs) in memory unless ``database`` names a file, so starting again registers the same
    node keys again without "Public key already in use". What must outlive a deployment
    (MLflow runs, checkpoints, the privacy ledger, signing key) lives under ``$FL_EXT_HOME``.

    A wait that fails says why: a process that exited fails it at once, with its exit code
    and the relevant lines of its log; a timeout quotes the SuperLink's and SuperNodes' logs.
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
        database: str | Path | None = None,
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
        self.database = Path(database).resolve() if database is not None else None
        self._health_error: str | None = None
        self._log_names: dict[int, str] = {}  # pid of each process started -> its log name
        self._programs: dict[int, str] = {}  # pid -> program name, for error messages
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
            self.wait_for(
                lambda: self.online_count() >= self.num_nodes,
                f"{self.num_nodes} SuperNodes online",
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
            *(["--database", str(self.database)] if self.database is not None else []),
            "--disable-runtime-dependency-installation",
        ]  # fmt: skip
        (self.flwr_home / "superlink.log").unlink(missing_ok=True)  # this start's log only
        self.superlink = self._spawn(command, "superlink.log")
        self.wait_for(self._healthy, f"SuperLink on {self.address}")

    def _processes(self) -> list[tuple[subprocess.Popen[bytes], str]]:
        """Every process started here with the name of its log."""
        started = [self.superlink] if self.superlink is not None else []
        return [(p, self._log_names[p.pid]) for p in [*started, *self.supernodes]]

    def wait_for(
        self,
        check: Callable[[], bool],
        what: str,
        *,
        timeout: float | None = None,
        watch: list[subprocess.Popen[bytes]] | None = None,
        poll: float = 0.2,
    ) -> None:
        """Poll ``check`` until true; fail at once if a started (or ``watch``ed) process exits.

        RuntimeError for an exited process (exit code, relevant log lines), TimeoutError after
        ``timeout`` s (default ``startup_timeout``) with the relevant lines of every log.
        """
        limit = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            self._fail_if_exited(watch or [])
            if check():
                return
            if time.monotonic() >= deadline:
                health = f"\nLast health check: {self._health_error}" if self._health_error else ""
                raise TimeoutError(
                    f"{what} not ready after {limit:.0f}s.{health}\n{self.log_reasons()}"
                )
            time.sleep(poll)

    def _fail_if_exited(self, watch: list[subprocess.Popen[bytes]]) -> None:
        extra = [(p, self._log_names[p.pid]) for p in watch]
        for process, log_name in self._processes() + extra:
            if process.poll() is not None:
                time.sleep(0.3)  # let the log copier write the last lines
                raise RuntimeError(
                    f"{self._programs[process.pid]} exited with code {process.returncode} "
                    f"(log {self.flwr_home / log_name}).\n"
                    f"{log_excerpt(self.flwr_home / log_name)}"
                )

    def log_reasons(self) -> str:
        """Relevant lines of the SuperLink's and every SuperNode's log, for error messages."""
        names = ["superlink.log", *(self._log_names[p.pid] for p in self.supernodes)]
        return "\n".join(log_excerpt(self.flwr_home / name) for name in names)

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
        self._log_names[process.pid] = log_name
        self._programs[process.pid] = Path(command[0]).name
        return process

    def _healthy(self) -> bool:
        scheme = "https" if self.tls else "http"
        context = (
            ssl.create_default_context(cafile=str(self.material.ca_cert)) if self.tls else None
        )
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.address}/health", timeout=0.5, context=context
            ) as response:
                return bool(response.status == 200)
        except urllib.error.URLError as err:
            if isinstance(err.reason, ssl.SSLCertVerificationError):
                # not transient: every SuperNode and the flwr CLI would be refused the same way
                why = str(err.reason.verify_message or err.reason).rstrip(".")
                raise RuntimeError(
                    f"TLS: the SuperLink certificate is refused on {self.address}: {why}. "
                    f"{self.material.server_cert} names "
                    f"{', '.join(self.material.server_hosts())}; generate material that "
                    "includes 127.0.0.1 (`python -m simulations.deploy keys ...`, loopback "
                    "names are included by default; `--overwrite` to replace this one)"
                ) from err
            self._health_error = str(err.reason)
            return False
        except OSError as err:
            self._health_error = str(err)
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
                f"\n{log_excerpt(self.flwr_home / 'superlink.log')}"
            ) from err

    def start_supernode(
        self,
        index: int,
        *,
        partition_id: int,
        key: Path | None = None,
        insecure: bool = False,
        max_retries: int | None = None,
        node_config: str = "",
    ) -> subprocess.Popen[bytes]:
        """One ``flower-supernode`` with node config ``partition-id``/``num-partitions``.

        ``key``/``insecure``/``max_retries`` let tests start nodes the SuperLink must refuse;
        ``node_config`` adds ``key=value`` pairs (e.g. ``train-delay-s=3`` for a slow device).
        """
        secure = not insecure and self.tls
        partition = f"partition-id={partition_id} num-partitions={self.num_partitions}"
        command = [
            flwr_bin("flower-supernode"),
            "--superlink", self.address,
            "--node-config", f"{partition} {node_config}".strip(),
            "--port", str(free_port()),
        ]  # fmt: skip
        if secure:
            command += ["--root-certificates", str(self.material.ca_cert)]
            command += ["--auth-supernode-private-key", str(key or self.material.node_key(index))]
        else:
            command.append("--insecure")
        if max_retries is not None:
            command += ["--max-retries", str(max_retries), "--max-wait-time", "20"]
        (self.flwr_home / f"supernode-{index}.log").unlink(missing_ok=True)
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
        self._fail_if_exited([])
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
