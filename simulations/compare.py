"""Compare the runs of one MLflow experiment: a markdown table and an accuracy-vs-round PNG.

python -m simulations.compare --experiment fl-ext [--out accuracy.png] [--uri URI]

Runs are keyed by their MLflow run id: two runs with the same name stay two rows and two
lines, labelled ``name #<run id prefix>``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from fl_ext.tracking import fl_ext_home, metric_key, resolve_tracking_uri
from fl_ext.tracking.plots import accuracy_plot_png


@dataclass(frozen=True)
class RunSummary:
    """One run's row in the comparison."""

    run_id: str
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
    label: str = ""  # unique in its comparison: the name, plus the short run id if needed


ACCURACY = metric_key("test_accuracy")
BYTES_UP_CUM = metric_key("bytes_up_cum")
# the flat names runs logged before metric_names.py (still read)
_LEGACY = {ACCURACY: "test_accuracy", BYTES_UP_CUM: "bytes_up_cum"}


def _history(client: MlflowClient, run_id: str, key: str) -> list[Metric]:
    return client.get_metric_history(run_id, key) or client.get_metric_history(run_id, _LEGACY[key])


def _latest(metrics: dict[str, float], key: str, default: float) -> float:
    return metrics.get(key, metrics.get(_LEGACY[key], default))


def short_id(run_id: str) -> str:
    """The first 8 characters of an MLflow run id."""
    return run_id[:8]


def label_runs(rows: list[RunSummary]) -> list[RunSummary]:
    """Each row with a unique label: its name, with ``#<short run id>`` where names repeat."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.name] = counts.get(r.name, 0) + 1
    return [
        replace(r, label=r.name if counts[r.name] == 1 else f"{r.name} #{short_id(r.run_id)}")
        for r in rows
    ]


def summarize(experiment: str, uri: str | None = None) -> list[RunSummary]:
    """All runs of ``experiment``, oldest first, one per MLflow run id, labelled uniquely."""
    client = MlflowClient(resolve_tracking_uri(uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(
            f"no MLflow experiment named '{experiment}' at {resolve_tracking_uri(uri)}"
        )
    rows = []
    for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
        history = _history(client, run.info.run_id, ACCURACY)
        curve = {int(m.step): float(m.value) for m in history}
        trained = {k: v for k, v in curve.items() if k > 0}
        end = run.info.end_time or run.info.start_time
        rows.append(
            RunSummary(
                run_id=run.info.run_id,
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
                mb_up=_latest(run.data.metrics, BYTES_UP_CUM, 0.0) / 1e6,
                wall_s=(end - run.info.start_time) / 1000,
                curve=curve,
            )
        )
    return label_runs(rows)


def markdown_table(rows: list[RunSummary]) -> str:
    """The comparison as a markdown table."""
    header = (
        "| run | run id | status | strategy | dataset | partition | model | seed | rounds "
        "| final acc | best acc | MB up | wall s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for r in rows:
        c = r.choices
        lines.append(
            f"| {r.name} | {short_id(r.run_id)} | {r.status} | {c.get('strategy', '?')} "
            f"| {c.get('dataset', '?')} | {c.get('partition', '?')} | {c.get('model', '?')} "
            f"| {r.seed} | {r.rounds} "
            f"| {r.final_accuracy:.4f} | {r.best_accuracy:.4f} | {r.mb_up:.1f} | {r.wall_s:.1f} |"
        )
    return "\n".join(lines)


def write_plot(rows: list[RunSummary], out: Path, title: str) -> Path:
    """Accuracy-vs-round curves of all runs in one PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    curves = {(r.label or r.run_id): r.curve for r in rows if r.curve}
    out.write_bytes(accuracy_plot_png(curves, title=title))
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
