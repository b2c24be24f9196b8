"""Run the app with the real ``flwr`` CLI and read back how the run ended.

``flwr run`` exits 0 even when the ServerApp fails, so the outcome is read from
``flwr ls --run-id`` (``finished:completed`` or ``finished:failed``).
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from simulations.local_superlink import flwr_bin

APP_DIR = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class RunOutcome:
    """A finished ``flwr run``: its id, final status and the streamed log."""

    run_id: int | None
    status: str
    output: str

    @property
    def ok(self) -> bool:
        """True when the ServerApp completed."""
        return self.status == "finished:completed"


class FlwrTarget(Protocol):
    """Where ``flwr`` commands go: the environment holds ``FLWR_HOME`` (and ports)."""

    env: dict[str, str]


def toml_string(text: str) -> str:
    """Quote ``text`` as a TOML basic string for ``--run-config``."""
    return json.dumps(text)


def run_app(
    link: FlwrTarget,
    overrides: list[str],
    *,
    connection: str | None = None,
    num_supernodes: int | None = 10,
    cpus_per_client: int | None = None,
    app_dir: Path = APP_DIR,
    timeout: float = 1800.0,
    echo: bool = False,
    on_line: Callable[[str], None] | None = None,
) -> RunOutcome:
    """``flwr run <app_dir> [connection] --stream`` with Hydra ``overrides``; wait for the end.

    ``connection``: a named SuperLink connection in ``$FLWR_HOME/config.toml`` (a deployment);
    None runs on the local simulation SuperLink with ``num_supernodes`` simulated nodes.
    ``on_line`` sees every streamed line as it arrives (``echo`` prints them unchanged).
    """
    command = [flwr_bin("flwr"), "run", str(app_dir)]
    if connection is not None:
        command.append(connection)
    command += ["--stream", "--run-config", f"overrides={toml_string(' '.join(overrides))}"]
    if num_supernodes is not None:
        federation = f"num-supernodes={num_supernodes}"
        if cpus_per_client is not None:
            federation += f" client-resources-num-cpus={cpus_per_client}"
        command += ["--federation-config", federation]
    process = subprocess.Popen(
        command,
        env=link.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
        if on_line is not None:
            on_line(line)
    process.wait(timeout=timeout)
    output = "".join(lines)
    match = re.search(r"Successfully started run (\d+)", output)
    run_id = int(match.group(1)) if match else None
    status = run_status(link, run_id, connection) if run_id is not None else "not-started"
    return RunOutcome(run_id, status, output)


def run_status(link: FlwrTarget, run_id: int, connection: str | None = None) -> str:
    """Status string of ``run_id`` from ``flwr ls``."""
    where = [connection] if connection is not None else []
    result = subprocess.run(
        [flwr_bin("flwr"), "ls", *where, "--run-id", str(run_id), "--format", "json"],
        env=link.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        runs = json.loads(result.stdout).get("runs", [])
    except json.JSONDecodeError:
        return f"unknown ({result.stdout.strip()[:200]} {result.stderr.strip()[:200]})"
    return str(runs[0]["status"]) if runs else "unknown (run not listed)"
