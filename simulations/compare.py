"""Compare the runs of one MLflow experiment: a markdown table and an accuracy-vs-round PNG.

python -m simulations.compare --experiment fl-ext [--out accuracy.png] [--uri URI]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from fl_ext.tracking import fl_ext_home, resolve_tracking_uri
from fl_ext.tracking.plots import accuracy_plot_png


@dataclass(frozen=True)
class RunSummary:
    """One run's row in the comparison."""

    name: str
    status: str
    choices: dict[str, str]
    seed: str
    rounds: int
    final_accuracy: float
    best_accuracy: float
    mb_up: float
    wall_s: float
    curve: dict[int, float]


def summarize(experiment: str, uri: str | None = None) -> list[RunSummary]:
    """All runs of ``experiment``, oldest first."""
    client = MlflowClient(resolve_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(
            f"no MLflow experiment named '{experiment}' at {resolve_tracking_uri(uri)}"
        )
    rows = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        curve = {int(m.step): float(m.value) for m in history}
        trained = {k: v for k, v in curve.items() if k > 0}
        end = run.info.end_time or run.info.start_time
        rows.append(
            RunSummary(
                name=run.info.run_name or run.info.run_id,
                status=run.info.status,
                choices={
                    k.removeprefix("choice."): v
                    for k, v in run.data.tags.items()
                    if k.startswith("choice.")
                },
                seed=run.data.params.get("seed", "?"),
                rounds=max(trained) if trained else 0,
                final_accuracy=curve[max(curve)] if curve else float("nan"),
                best_accuracy=max(trained.values()) if trained else float("nan"),
                mb_up=run.data.metrics.get("bytes_up_cum", 0.0) / 1e6,
                wall_s=(end - run.info.start_time) / 1000,
                curve=curve,
            )
        )
    return rows


def markdown_table(rows: list[RunSummary]) -> str:
    """The comparison as a markdown table."""
    header = (
        "| run | status | strategy | dataset | partition | model | seed | rounds | final acc "
        "| best acc | MB up | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        c = r.choices
        lines.append(
            f"| {r.name} | {r.status} | {c.get('strategy', '?')} | {c.get('dataset', '?')} "
            f"| {c.get('partition', '?')} | {c.get('model', '?')} | {r.seed} | {r.rounds} "
            f"| {r.final_accuracy:.4f} | {r.best_accuracy:.4f} | {r.mb_up:.1f} | {r.wall_s:.1f} |"
        )
    return "\n".join(lines)


def write_plot(rows: list[RunSummary], out: Path, title: str) -> Path:
    """Accuracy-vs-round curves of all runs in one PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(accuracy_plot_png({r.name: r.curve for r in rows if r.curve}, title=title))
    return out


def compare(
    experiment: str, *, uri: str | None = None, out: Path | None = None
) -> tuple[list[RunSummary], str, Path]:
    """The runs, their markdown table and the path of the written plot."""
    rows = summarize(experiment, uri)
    plot = write_plot(rows, out or fl_ext_home() / "plots" / f"{experiment}.png", experiment)
    return rows, markdown_table(rows), plot


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", default="fl-ext", help="MLflow experiment name")
    parser.add_argument("--uri", default=None, help="tracking URI (default: see README)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path for the accuracy plot")
    args = parser.parse_args(argv)
    _, table, plot = compare(args.experiment, uri=args.uri, out=args.out)
    print(table)
    print(f"\naccuracy plot: {plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
