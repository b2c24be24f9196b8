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

from simulations.run import EXIT_FAILED, EXIT_OK, launch, run_parser
from simulations.stats_phase import ARTIFACT
from simulations.task_runs import run_artifact, tracking_uri, write_json


def main(argv: list[str] | None = None, *, write: Callable[[str], None] = print) -> int:
    """The command line; returns the exit code."""
    parser = run_parser("python -m simulations.federated_stats", __doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    if not any(o.startswith("preprocessing=") for o in args.overrides):
        args.overrides.insert(0, "preprocessing=federated_stats")
    args.overrides.append("task=statistics")
    code, run_id = launch(parser, args, write=write)
    if code != EXIT_OK or run_id is None:
        return code
    from simulations.config import compose_experiment

    experiment = str(compose_experiment(args.overrides).cfg.tracking.experiment)
    try:
        result = run_artifact(tracking_uri(args.overrides), experiment, run_id, ARTIFACT)
    except (LookupError, OSError) as err:
        write(f"The run completed but its statistics could not be read: {err}")
        return EXIT_FAILED
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
