"""What a run does (``task``): train (the default), the statistics phase alone, or monitor.

``statistics`` and ``monitor`` are short runs with their own MLflow record: the statistics
run is a run of the experiment (``federated_stats.json``, ``stats.*`` tags); a monitor run
goes to ``monitor.experiment`` (``monitor.json``, ``monitor.*`` tags) and tags the
registered version it checked. Either ends FAILED, with the error tag, if anything raises.
"""

from __future__ import annotations

import logging

from flwr.serverapp import Grid

from fl_ext.tracking import MlflowTracker
from fl_ext.tracking.flatten import flatten
from simulations import naming
from simulations.build import Built
from simulations.config import ConfigError
from simulations.data_records import log_client_data, log_server_dataset
from simulations.monitoring import monitor
from simulations.run_loop import end_failed, run, run_tags
from simulations.stats_phase import apply_statistics
from strategies.nodes import wait_for_nodes

log = logging.getLogger("fl_ext")


def run_task(grid: Grid, built: Built, *, flwr_run_id: int | None = None) -> None:
    """Run the configured ``task`` on ``grid``."""
    task = built.experiment.cfg.task
    if task == "train":
        run(grid, built, flwr_run_id=flwr_run_id)
        return
    tracker = built.tracker
    if task == "monitor":
        if not isinstance(tracker, MlflowTracker):
            raise ConfigError("task=monitor reads the MLflow registry: use tracking=mlflow")
        tracker = MlflowTracker(
            uri=tracker.uri, experiment=str(built.experiment.cfg.monitor.experiment),
            register_model=False,
        )  # fmt: skip
        built.tracker = tracker
    name = (
        f"monitor {built.experiment.cfg.monitor.model}"
        if task == "monitor"
        else f"statistics {naming.run_name(built.experiment)}"
    )
    tags = {**run_tags(built, flwr_run_id), "fl_ext.kind": task}
    tracker.start(run_name=name[:250], params=flatten(built.experiment.resolved()), tags=tags)
    try:
        cfg = built.experiment.cfg
        nodes = wait_for_nodes(grid, cfg.min_available_nodes, timeout=cfg.node_wait_timeout)
        log_server_dataset(built)
        if task == "monitor":
            assert isinstance(tracker, MlflowTracker)
            monitor(grid, built, nodes, tracker=tracker)
        else:
            apply_statistics(built, grid, nodes, resumed=False)
        log_client_data(built)
    except BaseException as err:
        end_failed(tracker, err)
        raise
    tracker.end("FINISHED")
