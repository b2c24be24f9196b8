"""Check a registered model on the federation's current data; suggest re-training on decay.

    python -m simulations.monitor --model fl-ext-digits-mlp@best dataset=digits model=mlp
    python -m simulations.monitor --model fl-ext-mnist5k-cnn/3 --max-drop 0.03 --json m.json
    python -m simulations.monitor --model fl-ext-digits-mlp@best --retrain dataset=digits model=mlp

A federated evaluation of the version on every client's local data and the federated
statistics of their raw data, compared with what was recorded at registration (see
``simulations/monitoring.py``). A degraded model is tagged ``retrain_suggested`` with the
reason, alerted (log, MLflow tag, ``--webhook``); ``--retrain`` then starts the training run
with the same overrides. The overrides must build the same model and data specs the version
was trained with. Exit: 0 healthy or degraded (the verdict is printed and in ``--json``),
3 degraded with ``--fail-on-degraded``, else as ``simulations.run``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simulations.monitoring import REPORT
from simulations.run import EXIT_OK, launch, run_parser
from simulations.task_runs import launch_task, refuse_keys, write_json

EXIT_DEGRADED = 3


def main(argv: list[str] | None = None, *, write: Callable[[str], None] = print) -> int:
    """The command line; returns the exit code."""
    parser = run_parser("python -m simulations.monitor", __doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="NAME@ALIAS or NAME/VERSION")
    parser.add_argument("--max-drop", type=float, default=None, help="alerting accuracy drop")
    parser.add_argument("--max-stats-drift", type=float, default=None, help="in registered stds")
    parser.add_argument("--webhook", default=None, help="http(s) URL the alert is POSTed to")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--retrain", action="store_true", help="train again when degraded")
    parser.add_argument("--fail-on-degraded", action="store_true", help="exit 3 when degraded")
    args = parser.parse_args(argv)
    refuse_keys(
        parser, args.overrides, "task", "monitor.model", "monitor.max_drop",
        "monitor.max_stats_drift", "monitor.webhook",
    )  # fmt: skip
    training = list(args.overrides)
    args.overrides = [*training, "task=monitor", f"monitor.model={args.model}"]
    for key, value in (
        ("max_drop", args.max_drop),
        ("max_stats_drift", args.max_stats_drift),
        ("webhook", args.webhook),
    ):
        if value is not None:
            args.overrides.append(f"monitor.{key}={value}")
    code, report = launch_task(
        parser, args, experiment_key="monitor.experiment", artifact=REPORT, write=write
    )
    if report is None:
        return code
    write_json(args.json, report)
    for line in summary_lines(report):
        write(line)
    if report["degraded"] and args.retrain:
        write("Re-training suggested: starting the training run with the same overrides.")
        args.overrides = training
        return launch(parser, args, write=write)[0]
    return verdict_exit(report, fail_on_degraded=args.fail_on_degraded)


def summary_lines(report: dict[str, Any]) -> list[str]:
    """What the command prints about a monitor report: the verdict, then each reason."""
    verdict = "DEGRADED" if report["degraded"] else "healthy"
    head = (
        f"{report['model']} v{report['version']}: {verdict}, federated accuracy "
        f"{report['accuracy']:.4f} on {report['clients']} clients (registered "
        f"{report['reference_accuracy']:.4f}, {report['reference']})"
    )
    return [head, *(f"  - {reason}" for reason in report["reasons"])]


def verdict_exit(report: dict[str, Any], *, fail_on_degraded: bool) -> int:
    """0 healthy; a degraded model 3 with ``--fail-on-degraded`` (a CI gate), else 0."""
    return EXIT_DEGRADED if report["degraded"] and fail_on_degraded else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
