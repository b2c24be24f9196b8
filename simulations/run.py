"""Check an experiment's config, run it with ``flwr run``, follow it, exit with how it ended.

    python -m simulations.run dataset=digits model=mlp num_rounds=5
    python -m simulations.run --num-supernodes 20 partition=dirichlet partition.alpha=0.3
    python -m simulations.run --connection fl-ext-local num_rounds=3     # a deployment

Before anything starts, the config is composed and every check that needs no client runs
(unknown keys, values, components, the partition and the rule for this federation size, a
resume/rollback checkpoint), so a bad config fails in seconds with one line. Then the run is
submitted on a SuperLink this command starts on free loopback ports with *this* shell's
environment (``FL_EXT_HOME``, ``MLFLOW_TRACKING_URI``) and stops at the end, so a SuperLink
left running elsewhere can never take the run. The streamed log is shown without noise and
with tracebacks folded (``--verbose`` shows them); the exit code says how the run ended:
0 completed, 1 failed (the one-line reason is printed), 2 invalid config (nothing ran),
130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from simulations.config import ConfigError, Experiment, compose_experiment
from simulations.follow import Follower

DEFAULT_SUPERLINK = ("127.0.0.1", 39091)  # where a plain `flwr run .` finds its local SuperLink
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130


def precheck(overrides: list[str], num_nodes: int | None) -> None:
    """Every check that needs no client, for a federation of ``num_nodes`` (None: unknown).

    Raises :class:`ConfigError` with the reason. Composition errors come first and fast (no
    dataset or model is loaded before the config itself is valid).
    """
    experiment = compose_experiment(overrides)
    with _quiet("flwr", "fl_ext"):  # the ServerApp logs the same lines again when it runs
        _check_built(experiment, num_nodes)


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Only warnings and errors of these loggers while the checks run (unless --verbose)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    verbose = logging.getLogger("fl_ext").isEnabledFor(logging.DEBUG)
    for lg in loggers:
        lg.setLevel(lg.level if verbose else logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _check_built(experiment: Experiment, num_nodes: int | None) -> None:
    from fl_ext.compat import schema_hash
    from fl_ext.params import get_weights
    from simulations.build import build, check_aggregation, check_partitions
    from simulations.checkpointing import restore_point

    if num_nodes is not None and experiment.cfg.min_available_nodes > num_nodes:
        raise ConfigError(
            f"min_available_nodes={experiment.cfg.min_available_nodes} but the federation has "
            f"{num_nodes} SuperNodes: the run would wait node_wait_timeout and fail"
        )
    built = build(experiment)
    restore_point(  # verified only: the run restores it (RoundSaver.restore)
        experiment.resolved(),
        model_schema=schema_hash(get_weights(built.model)),
        model_name=experiment.choices["model"],
    )
    if num_nodes is not None:
        check_partitions(built, num_nodes)
        check_aggregation(built, num_nodes)


def foreign_superlink(address: tuple[str, int] = DEFAULT_SUPERLINK) -> bool:
    """Whether something listens where a plain ``flwr run .`` would find its SuperLink."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(address) == 0


@dataclass
class Target:
    """Where ``flwr`` commands go: the environment of this shell (a deployment connection)."""

    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))


def run_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every command that runs an experiment takes (run, monitor, statistics)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for conf/")
    parser.add_argument("--num-supernodes", type=int, default=10, help="simulated nodes")
    parser.add_argument("--cpus-per-client", type=int, default=None, help="1 runs 2 at a time")
    parser.add_argument("--connection", default=None, help="a SuperLink connection (deployment)")
    parser.add_argument("--verbose", action="store_true", help="tracebacks and checks' logs")
    parser.add_argument("--timeout", type=float, default=24 * 3600.0, help="seconds")
    return parser


def main(argv: list[str] | None = None, *, write: Callable[[str], None] = print) -> int:
    """The command line; returns the exit code."""
    parser = run_parser("python -m simulations.run", __doc__.split("\n\n")[0])
    args = parser.parse_args(argv)
    return launch(parser, args, write=write)[0]


def launch(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    write: Callable[[str], None] = print,
) -> tuple[int, int | None]:
    """Check ``args.overrides``, run them, follow: ``(exit code, flwr run id or None)``."""
    if args.num_supernodes < 1:
        parser.error(f"--num-supernodes must be >= 1, got {args.num_supernodes}")
    logging.getLogger("fl_ext").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        precheck(args.overrides, None if args.connection else args.num_supernodes)
    except ConfigError as err:
        write(f"Configuration error: {err}")
        return EXIT_CONFIG, None
    return _submit(args, write)


def _submit(args: argparse.Namespace, write: Callable[[str], None]) -> tuple[int, int | None]:
    from fl_ext.tracking.paths import fl_ext_home
    from simulations.flwr_cli import run_app
    from simulations.local_superlink import LocalSuperLink

    follower = Follower(verbose=args.verbose, write=write)
    try:
        if args.connection is not None:
            outcome = run_app(
                Target(), args.overrides, connection=args.connection, num_supernodes=None,
                timeout=args.timeout, on_line=follower,
            )  # fmt: skip
        else:
            if foreign_superlink():
                write(
                    "Note: a SuperLink on 127.0.0.1:39091 was not started by this command (a "
                    "plain `flwr run .` would use it, with the environment it was started "
                    "with); this run uses its own."
                )
            homes = fl_ext_home() / "superlinks"
            homes.mkdir(parents=True, exist_ok=True)
            home = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=homes))
            with LocalSuperLink(home) as link:
                write(f"SuperLink on 127.0.0.1:{link.http_port} (stopped when the run ends)")
                outcome = run_app(
                    link, args.overrides, num_supernodes=args.num_supernodes,
                    cpus_per_client=args.cpus_per_client, timeout=args.timeout,
                    on_line=follower,
                )  # fmt: skip
    except KeyboardInterrupt:
        write("Interrupted: the SuperLink this command started is stopped.")
        return EXIT_INTERRUPTED, None
    if outcome.ok:
        if args.connection is None:
            shutil.rmtree(home, ignore_errors=True)  # kept on failure: its superlink.log
        write(f"Run {outcome.run_id} completed.")
        return EXIT_OK, outcome.run_id
    reason = follower.reason or "no reason in the log; run again with --verbose"
    write(f"Run {outcome.run_id} ended {outcome.status}: {reason}")
    return EXIT_FAILED, outcome.run_id


if __name__ == "__main__":
    sys.exit(main())
