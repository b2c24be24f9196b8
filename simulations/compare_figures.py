"""The FL figures of one MLflow run, as simulations.compare shows them side by side.

Metrics are read under their MLflow names (``metric_key``), falling back to the flat names runs
logged before ``fl_ext/tracking/metric_names.py``. A figure a run never logged (epsilon without
DP, time to target without ``target_accuracy``) is ``None`` and shows as ``-``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from fl_ext.tracking import metric_key

MB = 1e6
# flat names (what the strategy reports); their MLflow names come from metric_key
_FLAT = {
    "accuracy": "test_accuracy",
    "up": "bytes_up_cum",
    "down": "bytes_down_cum",
    "eps_client": "dp_epsilon_client_level",
    "eps_sample": "dp_epsilon_sample_level_max",
    "rejected": "clients_rejected",
    "to_target": "time_to_target_s",
    "sim_to_target": "sim_time_to_target_s",
}
KEYS = {figure: metric_key(flat) for figure, flat in _FLAT.items()}
# run tags naming the dataset version, most specific first: ``dataset_version`` (set by
# simulations/data_records.py), then a hash: ``dataset_hash`` (the registry's spelling) or
# ``dataset.hash`` (what simulations/run_loop.py sets on every run)
DATA_VERSION_TAG = "dataset_version"
DATA_HASH_TAGS = ("dataset_hash", "dataset.hash")


@dataclass(frozen=True)
class RunSummary:
    """One run's row in the comparison (``None``: not logged by that run)."""

    run_id: str
    name: str
    status: str
    choices: dict[str, str]
    seed: str
    rounds: int
    final_accuracy: float
    best_accuracy: float
    mb_up: float | None
    wall_s: float
    curve: dict[int, float]
    label: str = ""  # unique in its comparison: the name, plus the short run id if needed
    experiment: str = ""
    mb_down: float | None = None
    eps_client: float | None = None
    eps_sample: float | None = None
    rejected: int | None = None
    to_target_s: float | None = None
    sim_to_target_s: float | None = None
    data: str = "-"
    mb_curve: list[tuple[float, float]] = field(default_factory=list)  # (MB up, accuracy)


def _history(client: MlflowClient, run_id: str, figure: str) -> dict[int, float]:
    """``{step: value}`` of a figure's metric, the last value logged where a step repeats."""
    found: list[Metric] = client.get_metric_history(run_id, KEYS[figure])
    found = found or client.get_metric_history(run_id, _FLAT[figure])
    return {int(m.step): float(m.value) for m in sorted(found, key=lambda m: (m.step, m.timestamp))}


def _last(metrics: Mapping[str, float], figure: str) -> float | None:
    """The latest value of a figure's metric (MLflow keeps it per key), or None."""
    value = metrics.get(KEYS[figure], metrics.get(_FLAT[figure]))
    return None if value is None else float(value)


def data_version(tags: Mapping[str, str]) -> str:
    """The run's dataset version tag, else the first 12 characters of its dataset hash, else -."""
    if tags.get(DATA_VERSION_TAG):
        return tags[DATA_VERSION_TAG]
    for tag in DATA_HASH_TAGS:
        if tags.get(tag):
            return tags[tag][:12]
    return "-"


def mb_curve(curve: Mapping[int, float], up: Mapping[int, float]) -> list[tuple[float, float]]:
    """(cumulative MB uploaded, accuracy) per round; round 0 (nothing sent yet) is at 0 MB."""
    if not up:
        return []
    return [
        ((up[step] if step in up else 0.0) / MB, curve[step])
        for step in sorted(curve)
        if step in up or step == 0
    ]


def run_summary(client: MlflowClient, run: Run, experiment: str) -> RunSummary:
    """One run's figures: accuracy curve, epsilon, traffic, rejections, time, data version."""
    run_id, metrics = run.info.run_id, run.data.metrics
    curve = _history(client, run_id, "accuracy")
    trained = {k: v for k, v in curve.items() if k > 0}
    rejected = _history(client, run_id, "rejected")
    up, down = _last(metrics, "up"), _last(metrics, "down")
    end = run.info.end_time or run.info.start_time
    return RunSummary(
        run_id=run_id,
        name=run.info.run_name or run_id,
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
        mb_up=None if up is None else up / MB,
        wall_s=(end - run.info.start_time) / 1000,
        curve=curve,
        experiment=experiment,
        mb_down=None if down is None else down / MB,
        eps_client=_last(metrics, "eps_client"),
        eps_sample=_last(metrics, "eps_sample"),
        rejected=round(sum(rejected.values())) if rejected else None,
        to_target_s=_last(metrics, "to_target"),
        sim_to_target_s=_last(metrics, "sim_to_target"),
        data=data_version(run.data.tags),
        mb_curve=mb_curve(curve, _history(client, run_id, "up")) if up is not None else [],
    )


COLUMNS = (
    "experiment", "run", "run id", "status", "strategy", "dataset", "partition", "model",
    "seed", "rounds", "final acc", "best acc", "eps client", "eps sample", "MB up", "MB down",
    "rejected", "to target s", "sim to target s", "wall s", "data",
)  # fmt: skip
_MARKDOWN = {"acc": ".4f", "eps": ".3f", "mb": ".2f", "n": "d", "s": ".1f"}


def _cells(r: RunSummary, fmt: Mapping[str, str] | None) -> list[object]:
    """The row's values in COLUMNS order: formatted by ``fmt`` (``-`` if absent), or raw."""

    def num(value: float | None, spec: str) -> object:
        if value is None:
            return "-" if fmt is not None else ""
        return format(value, fmt[spec]) if fmt is not None else value

    c = r.choices
    return [
        r.experiment,
        r.name,
        r.run_id[:8] if fmt is not None else r.run_id,
        r.status,
        *(c.get(k, "?") for k in ("strategy", "dataset", "partition", "model")),
        r.seed,
        r.rounds,
        num(r.final_accuracy, "acc"),
        num(r.best_accuracy, "acc"),
        num(r.eps_client, "eps"),
        num(r.eps_sample, "eps"),
        num(r.mb_up, "mb"),
        num(r.mb_down, "mb"),
        num(r.rejected, "n"),
        num(r.to_target_s, "s"),
        num(r.sim_to_target_s, "s"),
        num(r.wall_s, "s"),
        r.data,
    ]


def markdown_table(rows: list[RunSummary]) -> str:
    """The comparison as a markdown table, one row per run, ``-`` where a figure is absent."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = (str(v).replace("|", "\\|") for v in _cells(r, _MARKDOWN))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[RunSummary]) -> str:
    """The comparison as CSV: full run ids, full precision, empty where a figure is absent."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(_cells(r, None) for r in rows)
    return out.getvalue()
