"""Run the federated-statistics phase alone and print the federation's per-channel figures.

    python -m simulations.federated_stats dataset=digits [--json stats.json]
    python -m simulations.federated_stats --num-supernodes 20 preprocessing.min_count=50

Every client reports the count, mean and sum of squared deviations of its training data per
channel (never the data); the server merges them exactly (see README "Federated
statistics"). The result is an MLflow run of the experiment (``federated_stats.json``);
``--json`` writes it here too. Exit codes as ``simulations.run``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from simulations.run import EXIT_OK, run_parser
from simulations.stats_phase import ARTIFACT
from simulations.task_runs import launch_task, refuse_keys, write_json


def main(argv: list[str] | None = None, *, write: Callable[[str], None] = print) -> int:
    """The command line; returns the exit code."""
    parser = run_parser("python -m simulations.federated_stats", __doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    refuse_keys(parser, args.overrides, "task")
    if not any(o.startswith("preprocessing=") for o in args.overrides):
        args.overrides.insert(0, "preprocessing=federated_stats")
    args.overrides.append("task=statistics")
    code, result = launch_task(
        parser, args, experiment_key="tracking.experiment", artifact=ARTIFACT, write=write
    )
    if result is None:
        return code
    write(
        f"Federated statistics of {result['clients']} clients, {result['examples']} examples "
        f"(declined {len(result['declined'])}, rejected {len(result['rejected'])}):"
    )
    for c, (m, s) in enumerate(zip(result["mean"], result["std"], strict=True)):
        write(f"  channel {c}: mean {m:.6f}  std {s:.6f}")
    write_json(args.json, result)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
