"""``python -m simulations.run``: checks first, then a real run it follows, exit code = outcome."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from simulations.follow import PROGRESS, Follower
from simulations.run import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["dataset=digits", "model=mlp", "num_rounds=2", "fraction_evaluate=0"]


def _cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "simulations.run", *args],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        (["+num_round=2"], "unknown key 'num_round' in override '+num_round=2'; did you mean"),
        (["lr=-1"], "lr=-1 is invalid: must be > 0"),
        (["aggregator=bulyan", "aggregator.f=3"], "Bulyan"),  # needs 15 of the 10 nodes
        (["min_available_nodes=11"], "min_available_nodes=11 but the federation has 10"),
        (["resume=/nonexistent/run"], "checkpoint directory /nonexistent/run does not exist"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2_before_anything_starts(overrides, reason):
    lines = []
    assert main([*overrides], write=lines.append) == 2
    assert len(lines) == 1 and lines[0].startswith("Configuration error: ") and reason in lines[0]


@pytest.mark.slow
def test_a_run_is_followed_to_its_end_and_exits_0(tmp_path):
    done = _cli("--num-supernodes", "3", *TINY)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert sum("Round 1/2:" in line for line in lines) == 1  # every event once
    assert sum("Round 2/2:" in line for line in lines) == 1
    assert sum(line.startswith("Finished:") or "Finished: 2 rounds" in line for line in lines) == 1
    for noise in ("DEBUG", "Manually terminating", "SADeprecationWarning", "changed from 10 to 2"):
        assert noise not in out, noise
    assert re.search(r"Run \d+ completed\.", out)


@pytest.mark.slow
def test_a_run_that_cannot_start_exits_1_with_the_reason():
    done = _cli("--connection", "no-such-connection", *TINY, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ended not-started" in done.stdout


TRACEBACK_LOG = """\
INFO :      fl-ext overrides: ['lr=-1']
ERROR :     Configuration error: lr=-1 is invalid: must be > 0
ERROR :     ServerApp raised an exception
Traceback (most recent call last):
  File "/x/flwr/server/serverapp/app.py", line 1, in run
    main(grid, context)
  File "/x/simulations/server_app.py", line 2, in main
    built = build(compose_experiment(overrides))
            ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
simulations.config.ConfigError: lr=-1 is invalid: must be > 0

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/x/flwr/simulation/app.py", line 3, in run
    raise RuntimeError("ServerApp failed")
RuntimeError: ServerApp failed
\x1b[36m(ClientAppActor pid=1)\x1b[0m \x1b[93mWARNING \x1b[0m:   Manually terminating ClientAppActor
INFO :      Round 1/2: test acc 0.5 | 1.00s
DEBUG :     Terminated RayBackend
"""


def test_follower_folds_tracebacks_drops_noise_and_keeps_the_reason():
    shown = []
    follower = Follower(write=shown.append)
    for line in TRACEBACK_LOG.splitlines(keepends=True):
        follower(line)
    assert follower.reason == "lr=-1 is invalid: must be > 0"
    assert not any("Traceback" in s or s.startswith("  ") for s in shown), shown
    assert not any("Manually terminating" in s or "DEBUG" in s for s in shown)
    assert "INFO :      Round 1/2: test acc 0.5 | 1.00s" in shown
    verbose = []
    loud = Follower(write=verbose.append, verbose=True)
    for line in TRACEBACK_LOG.splitlines():
        loud(line)
    assert sum("Traceback" in s for s in verbose) == 2


def test_follower_reason_is_the_last_exception_without_a_config_error():
    follower = Follower(write=lambda _: None)
    for line in TRACEBACK_LOG.splitlines()[3:]:
        follower(line)
    assert follower.reason == "RuntimeError: ServerApp failed"


def test_sweep_filter_shows_round_lines_only():
    shown = []
    follower = Follower(write=shown.append, prefix="[job 0] ", only=PROGRESS)
    for line in TRACEBACK_LOG.splitlines():
        follower(line)
    assert shown[-1] == "[job 0] INFO :      Round 1/2: test acc 0.5 | 1.00s"
    assert all("fl-ext overrides" not in s for s in shown)
