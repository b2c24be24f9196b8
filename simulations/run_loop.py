"""Run a built experiment on a Grid, tracked from its first round to its end.

A fresh run, or one restarted from a checkpoint (``resume``: same MLflow run, state
restored; ``rollback_from``: a new run from an earlier global model), see checkpointing.py.
A crash ends the tracked run FAILED with whatever was logged so far; ``flwr stop`` ends it
KILLED.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from omegaconf import OmegaConf

import fl_ext
from fl_ext.compat import schema_hash
from fl_ext.params import get_weights
from fl_ext.tracking import Tracker
from fl_ext.tracking.flatten import flatten
from fl_ext.tracking.paths import fl_ext_home
from flwr_records import named_array_record
from simulations import naming
from simulations.build import Built, check_aggregation, check_partitions, check_privacy
from simulations.central_eval import central_evaluate
from simulations.checkpointing import Restored, RoundSaver, open_store
from simulations.config import ConfigError
from simulations.data_records import log_client_data, log_server_dataset
from simulations.finish import finish
from simulations.run_control import RunControl
from simulations.stats_phase import apply_statistics
from strategies.nodes import wait_for_nodes

log = logging.getLogger("fl_ext")


def run(grid: Grid, built: Built, *, flwr_run_id: int | None = None) -> Result:
    """Run the federation and track it; the tracked run ends FAILED if anything raises."""
    exp, tracker = built.experiment, built.tracker
    saver = RoundSaver(
        strategy=built.strategy,
        privacy=built.strategy.privacy,
        history=built.history,
        config=exp.resolved(),
    )
    # a bad checkpoint fails here, before anything is tracked
    restored = saver.restore(
        model_schema=schema_hash(get_weights(built.model)), model_name=exp.choices["model"]
    )
    tags = run_tags(built, flwr_run_id)
    last_logged = -1
    if restored is not None and restored.mode == "resume":
        run_id = restored.mlflow_run_id
        try:
            last_logged = tracker.resume(run_id) if run_id else -1
        except ValueError as err:
            raise ConfigError(str(err)) from err
        tracker.set_tags(
            {
                f"resumed.round{restored.first_round}.flwr_run_id": str(flwr_run_id),
                "resumed_from": str(restored.checkpoint.path),
            }
        )
    else:
        tracker.start(run_name=naming.run_name(exp), params=flatten(exp.resolved()), tags=tags)
    try:
        result = _run_tracked(grid, built, saver, restored, last_logged)
    except BaseException as err:
        end_failed(tracker, err, status="KILLED" if built.stopped else "FAILED")
        raise
    tracker.end("KILLED" if built.stopped else "FINISHED")  # KILLED: "killed by user"
    return result


def run_tags(built: Built, flwr_run_id: int | None) -> dict[str, str]:
    """The tags every fl-ext MLflow run starts with (version, flwr run, data, choices)."""
    return {
        "fl_ext.version": fl_ext.__version__,
        "flwr.run_id": str(flwr_run_id),
        "dataset.hash": built.split.content_hash,
        **{f"choice.{k}": v for k, v in built.experiment.choices.items()},
    }


def end_failed(tracker: Tracker, err: BaseException, *, status: str = "FAILED") -> None:
    """End the tracked run with ``status`` and the error as its ``error`` tag (kept short)."""
    try:
        tracker.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
    finally:
        tracker.end(status)


def _run_tracked(
    grid: Grid, built: Built, saver: RoundSaver, restored: Restored | None, last_logged: int
) -> Result:
    cfg, tracker = built.experiment.cfg, built.tracker
    if restored is None or restored.mode == "rollback":
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    store = None
    if cfg.checkpoint.enabled:
        directory = (
            restored.store.directory
            if restored is not None and restored.mode == "resume"
            else Path(cfg.checkpoint.dir or fl_ext_home() / "checkpoints" / _run_key(tracker))
        )
        store = open_store(directory, saver.config)
        tracker.set_tags({"checkpoint.dir": str(store.directory.resolve())})
        log.info("Signed checkpoints of every round in %s", store.directory.resolve())
    saver.attach(store, run_id=tracker.run_id)
    initial = named_array_record(get_weights(built.model))
    first_round = 1
    if restored is not None:
        checkpoint = restored.checkpoint
        initial = named_array_record(checkpoint.arrays)
        first_round = restored.first_round
        if restored.mode == "resume":
            if last_logged < checkpoint.server_round:  # saved, not yet logged: log it now
                tracker.log_metrics(checkpoint.server_round, checkpoint.state["metrics"])
        else:
            tracker.set_tags(
                {
                    "rollback.from": str(checkpoint.path),
                    "rollback.round": str(checkpoint.server_round),
                    "rollback.signature": checkpoint.signature,
                }
            )
        log.info(
            "%s from %s: rounds %d..%d",
            restored.mode.capitalize(),
            checkpoint.path,
            first_round,
            cfg.num_rounds,
        )
    nodes = wait_for_nodes(grid, cfg.min_available_nodes, timeout=cfg.node_wait_timeout)
    check_partitions(built, len(nodes))
    check_aggregation(built, len(nodes))
    check_privacy(built, len(nodes))
    tracker.set_tags({"num_clients": str(len(nodes))})
    log_server_dataset(built)
    apply_statistics(built, grid, nodes, resumed=restored is not None and restored.mode == "resume")
    log_client_data(built)

    def on_round_end(server_round: int, metrics: dict[str, float]) -> None:
        tracker.log_metrics(server_round, metrics)
        for path, data in built.strategy.artifacts().items():  # each round: none lost
            if isinstance(data, bytes):
                tracker.log_png(data, path)
            else:
                tracker.log_text(data, path)
        for key in ("fed_eval_accuracy", "fed_eval_received_accuracy"):
            if key in metrics:
                built.last_fed_eval = float(metrics[key])
        log_client_data(built)

    control = RunControl.for_this_process(on_stop=lambda why: _stopped(built, why))
    control.close_on_exit(lambda: tracker.end("KILLED"))  # stopped in the middle of a round
    result = built.strategy.start(
        grid=grid,
        initial_arrays=initial,
        num_rounds=cfg.num_rounds,
        timeout=cfg.round_timeout,
        train_config=built.train_config,
        evaluate_config=built.evaluate_config,
        evaluate_fn=lambda rnd, arrays: central_evaluate(built, rnd, arrays),
        on_round_end=on_round_end,
        first_round=first_round,
        checkpoint_fn=saver,
        should_stop=control,
    )
    reason = built.strategy.stop_reason
    if built.stopped is None and reason is not None:
        early = reason.startswith("early stopping:")
        tracker.set_tags({"early_stopping.stopped" if early else "privacy.stopped": reason[:5000]})
    finish(built, result, num_clients=len(nodes), saver=saver)
    control.close()
    return result


def _stopped(built: Built, reason: str) -> None:
    """``flwr stop``: the run ends KILLED (see ``run``), tagged why, its logged rounds kept."""
    built.stopped = reason
    built.tracker.set_tags({"stopped": reason[:5000]})


def _run_key(tracker: Tracker) -> str:
    """Checkpoint sub-directory of a fresh run: its MLflow run id, else a timestamp."""
    return tracker.run_id or time.strftime("run-%Y%m%d-%H%M%S")
