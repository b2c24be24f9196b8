"""Compare the runs of MLflow experiments (several sweeps side by side): a table and two PNGs.

python -m simulations.compare --experiment fl-ext [--out accuracy.png] [--uri URI] [--no-log]
python -m simulations.compare --experiment sweep-a --experiment sweep-b   # or sweep-a,sweep-b

The table (markdown, and CSV beside the plot) has final and best test accuracy, epsilon,
MB up/down, rejected updates, time to target, wall time and the dataset version per run;
the plots are accuracy vs round and accuracy vs cumulative MB uploaded. Unless ``--no-log``,
all of it is logged as artifacts of a run named ``compare`` (tag ``fl_ext.kind=compare``) in
the first experiment; comparisons skip such runs.

Runs are keyed by their MLflow run id: two runs with the same name stay two rows and two
lines, labelled ``name #<run id prefix>`` (``experiment: name`` when comparing several).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from fl_ext.tracking import MlflowTracker, fl_ext_home, resolve_tracking_uri
from fl_ext.tracking.plots import accuracy_plot_png, accuracy_vs_mb_png
from simulations.compare_figures import RunSummary, csv_table, markdown_table, run_summary

__all__ = [
    "Comparison",
    "NoRunsToCompare",
    "RunSummary",
    "compare",
    "main",
    "markdown_table",
    "run_comparison",
    "summarize",
]

KIND_TAG = "fl_ext.kind"
COMPARE_KIND = "compare"


class NoRunsToCompare(SystemExit):
    """An experiment exists but holds no run to compare (exit status 1, with the message)."""


@dataclass(frozen=True)
class Comparison:
    """A comparison's rows, tables, written plots and (if logged) its MLflow run id."""

    experiments: list[str]
    rows: list[RunSummary]
    table: str
    csv: str
    plots: dict[str, Path] = field(default_factory=dict)  # artifact name -> written file
    csv_path: Path | None = None
    mlflow_run_id: str | None = None


def short_id(run_id: str) -> str:
    """The first 8 characters of an MLflow run id."""
    return run_id[:8]


def label_runs(rows: list[RunSummary], *, with_experiment: bool = False) -> list[RunSummary]:
    """Each row with a unique label: its name (``experiment: name``), ``#<short id>`` if needed."""
    bases = [f"{r.experiment}: {r.name}" if with_experiment else r.name for r in rows]
    counts = Counter(bases)
    return [
        replace(r, label=b if counts[b] == 1 else f"{b} #{short_id(r.run_id)}")
        for r, b in zip(rows, bases, strict=True)
    ]


def experiment_names(values: Sequence[str]) -> list[str]:
    """``--experiment`` values, repeated and/or comma-separated, in order, each once."""
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    return list(dict.fromkeys(names))


def _runs(client: MlflowClient, experiment_id: str) -> Iterator[Run]:
    """All active runs, oldest first, page by page (a large sweep has more than one page)."""
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], order_by=["attributes.start_time ASC"], page_token=token
        )
        yield from page
        token = page.token
        if not token:
            return


def summarize(experiments: str | Sequence[str], uri: str | None = None) -> list[RunSummary]:
    """All runs of the experiments (in the order given, each oldest first), labelled uniquely.

    Runs tagged ``fl_ext.kind`` other than ``train`` (earlier comparisons, ``task=statistics``
    and ``task=monitor`` runs) are skipped. SystemExit names an
    experiment that does not exist, or one with no run to compare, and the tracking URI.
    """
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    if not names:
        raise SystemExit("no MLflow experiment to compare")
    resolved = resolve_tracking_uri(uri)
    client = MlflowClient(resolved)
    found = {name: client.get_experiment_by_name(name) for name in names}
    missing = [name for name, exp in found.items() if exp is None]
    if missing:
        listed = ", ".join(f"'{m}'" for m in missing)
        raise SystemExit(f"no MLflow experiment named {listed} at {resolved}")
    rows: list[RunSummary] = []
    for name, exp in found.items():
        if exp is None:  # reported above
            continue
        runs = [  # training runs only: not comparisons, statistics or monitor runs
            r
            for r in _runs(client, exp.experiment_id)
            if r.data.tags.get(KIND_TAG, "train") == "train"
        ]
        if not runs:
            raise NoRunsToCompare(
                f"MLflow experiment '{name}' at {resolved} has no runs to compare"
            )
        rows.extend(run_summary(client, run, name) for run in runs)
    return label_runs(rows, with_experiment=len(names) > 1)


def _mb_path(out: Path) -> Path:
    return out.with_name(f"{out.stem}_vs_mb{out.suffix or '.png'}")


def write_plots(rows: list[RunSummary], out: Path, title: str) -> dict[str, Path]:
    """Accuracy vs round at ``out``, accuracy vs MB uploaded at ``<out stem>_vs_mb.png``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    plotted = [r for r in rows if r.curve]  # one style slot per run on both plots
    by_round = {(r.label or r.run_id): r.curve for r in plotted}
    by_mb = {(r.label or r.run_id): r.mb_curve for r in plotted}
    mb_out = _mb_path(out)
    out.write_bytes(accuracy_plot_png(by_round, title=title))
    mb_out.write_bytes(accuracy_vs_mb_png(by_mb, title=title))
    return {"accuracy_vs_round.png": out, "accuracy_vs_mb.png": mb_out}


def log_comparison(comparison: Comparison, uri: str | None = None) -> str:
    """Log tables and plots as artifacts of a new ``compare`` run in the first experiment."""
    tracker = MlflowTracker(uri=uri, experiment=comparison.experiments[0], register_model=False)
    tracker.start(
        run_name="compare",
        params={},
        tags={
            KIND_TAG: COMPARE_KIND,
            "compare.experiments": ",".join(comparison.experiments)[:5000],
            "compare.runs": str(len(comparison.rows)),
            "mlflow.note.content": comparison.table[:5000],  # the run's description in the UI
        },
    )
    try:
        tracker.log_text(comparison.table + "\n", "comparison.md")
        tracker.log_text(comparison.csv, "comparison.csv")
        for name, path in comparison.plots.items():
            tracker.log_png(path.read_bytes(), name)
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return str(tracker.run_id)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name)


def run_comparison(
    experiments: str | Sequence[str],
    *,
    uri: str | None = None,
    out: Path | None = None,
    log: bool = False,
) -> Comparison:
    """Summarize, tabulate, plot (and with ``log``, log to MLflow) the experiments' runs."""
    names = [experiments] if isinstance(experiments, str) else list(experiments)
    rows = summarize(names, uri)
    title = " + ".join(names)
    out = out or fl_ext_home() / "plots" / f"{_safe('+'.join(names))}.png"
    comparison = Comparison(
        experiments=names,
        rows=rows,
        table=markdown_table(rows),
        csv=csv_table(rows),
        plots=write_plots(rows, out, title),
        csv_path=out.with_suffix(".csv"),
    )
    out.with_suffix(".csv").write_text(comparison.csv)
    if log:
        comparison = replace(comparison, mlflow_run_id=log_comparison(comparison, uri))
    return comparison


def compare(
    experiment: str | Sequence[str], *, uri: str | None = None, out: Path | None = None
) -> tuple[list[RunSummary], str, Path]:
    """The runs, their markdown table and the accuracy-vs-round plot (not logged to MLflow)."""
    found = run_comparison(experiment, uri=uri, out=out)
    return found.rows, found.table, found.plots["accuracy_vs_round.png"]


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--experiment",
        action="append",
        default=None,
        help="MLflow experiment name; repeat or comma-separate to compare several "
        "(default: fl-ext)",
    )
    parser.add_argument("--uri", default=None, help="tracking URI (default: see README)")
    parser.add_argument("--out", type=Path, default=None, help="PNG path for the accuracy plot")
    parser.add_argument(
        "--no-log",
        dest="log",
        action="store_false",
        help="do not log the comparison as an MLflow run named 'compare'",
    )
    args = parser.parse_args(argv)
    names = experiment_names(args.experiment or ["fl-ext"])
    try:
        found = run_comparison(names, uri=args.uri, out=args.out, log=args.log)
    except NoRunsToCompare as err:
        print(err, file=sys.stderr)
        return 1
    print(found.table)
    print(f"\naccuracy plot: {found.plots['accuracy_vs_round.png']}")
    print(f"accuracy vs MB uploaded: {found.plots['accuracy_vs_mb.png']}")
    print(f"table as CSV: {found.csv_path}")
    if found.mlflow_run_id is not None:
        print(f"logged as MLflow run {found.mlflow_run_id} ('compare') in '{names[0]}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
