"""One study run: the real experiment on the in-process grid, its curve read back from MLflow.

Shared by the time-to-accuracy studies (selection, asynchronous): each point is one round (or
model version) with its test accuracy and the metrics the study names, as MLflow logged them.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from fl_ext.tracking import metric_key, resolve_tracking_uri
from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

Point = dict[str, float]


def run_curve(name: str, overrides: list[str], nodes: int, metrics: tuple[str, ...]) -> list[Point]:
    """Run the experiment ``name``; per round: ``round``, ``accuracy`` and each of ``metrics``.

    A round missing one of ``metrics`` in MLflow is left out (a round that logged nothing).
    """
    built = build(
        compose_experiment(
            [*overrides, f"tracking.experiment={name}", "tracking.register_model=false"]
        )
    )
    run(InProcessGrid(client_app, nodes), built)
    client = MlflowClient(resolve_tracking_uri())
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise RuntimeError(f"the run logged no MLflow experiment {name!r}")
    (found,) = client.search_runs([exp.experiment_id], max_results=1)
    series = {
        m: {p.step: p.value for p in client.get_metric_history(found.info.run_id, metric_key(m))}
        for m in metrics
    }
    return [
        {"round": float(r), "accuracy": built.history[r], **{m: series[m][r] for m in metrics}}
        for r in sorted(built.history)
        if r > 0 and all(r in series[m] for m in metrics)
    ]


def time_to(curve: list[Point], target: float, clock: str = "sim_time_s") -> float | None:
    """The clock of the first point at or above ``target`` accuracy (None: never reached)."""
    return next((p[clock] for p in curve if p["accuracy"] >= target), None)
