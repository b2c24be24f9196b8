"""Build every component of an experiment from its config, then run it on a Grid.

Everything that can be wrong with a config (a bad alpha, a model that does not fit the
input, too many partitions) is found in :func:`build` before the first round. The run is
tracked from its first round to its end; a crash ends the tracked run FAILED with whatever
was logged so far.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

import fl_ext
from fl_ext.aggregators import Aggregator, RobustAggregation
from fl_ext.attacks import OmniscientAttack
from fl_ext.data import Partitioner
from fl_ext.data.datasets import TrainTestSplit, content_hash
from fl_ext.data.federated import load_split
from fl_ext.early_stopping import EarlyStopping
from fl_ext.models import ClassifierNet
from fl_ext.params import ParamSpec, get_weights, set_weights
from fl_ext.preagg import PreAggregator
from fl_ext.selection import Selector
from fl_ext.selection.network import SimulatedNetwork
from fl_ext.server_opt import ServerOptimizer
from fl_ext.specs import SpecError, build_from_spec, spec_to_json
from fl_ext.tracking import Tracker
from fl_ext.tracking.flatten import flatten
from fl_ext.tracking.paths import fl_ext_home
from fl_ext.tracking.plots import accuracy_plot_png
from fl_ext.training import TrainConfig, evaluate, seed_for, train_local
from flwr_records import named_array_record
from simulations import naming
from simulations.checkpointing import (
    Restored,
    RoundSaver,
    open_store,
    restore_ledger,
    restore_point,
)
from simulations.compression_build import build_compression
from simulations.config import ConfigError, Experiment
from simulations.privacy_build import build_privacy, check_privacy_federation
from simulations.run_control import RunControl
from strategies import FlExtFedAvg
from strategies.byzantine import ByzantineSimulation
from strategies.compression import AdaptiveCompression, Compression
from strategies.nodes import wait_for_nodes
from strategies.stragglers import MeasuredStragglers, RoundPolicy, StragglerPolicy

log = logging.getLogger("fl_ext")


@dataclass
class Built:
    """The experiment's live parts."""

    experiment: Experiment
    split: TrainTestSplit
    model: ClassifierNet
    partitioner: Partitioner
    strategy: FlExtFedAvg
    tracker: Tracker
    train_config: ConfigRecord
    evaluate_config: ConfigRecord
    history: dict[int, float] = field(default_factory=dict)
    stopped: str | None = None  # why the run was stopped from outside (`flwr stop`)


def build(experiment: Experiment) -> Built:
    """Instantiate dataset, partitioner, model, strategy and tracker; ConfigError if any fails."""
    conf = experiment.resolved()
    try:
        dataset_json = spec_to_json(conf["dataset"])
        split = load_split(dataset_json)
        partitioner = build_from_spec(conf["partition"], Partitioner)
        torch.manual_seed(conf["seed"])
        model = build_from_spec(
            conf["model"],
            ClassifierNet,
            input_shape=split.input_shape,
            num_classes=split.num_classes,
        )
        strategy_cfg = OmegaConf.create(conf["strategy"])
        if strategy_cfg.get("max_examples_per_client") is None:
            strategy_cfg.max_examples_per_client = len(split.train)
        aggregation = RobustAggregation(
            rule=build_from_spec(conf["aggregator"], Aggregator),
            preagg=[
                build_from_spec(spec, PreAggregator) for spec in (conf.get("preagg") or {}).values()
            ],
            device=conf.get("aggregation_device", "auto"),
        )
        reference = root_update_fn(split, model, conf) if aggregation.needs_reference else None
        privacy = build_privacy(conf, split, model)
        compression = build_compression(conf)
        selector = build_from_spec(conf["selection"], Selector)
        opt_spec = conf.get("server_opt") or {}
        server_opt = (
            build_from_spec(opt_spec, ServerOptimizer) if opt_spec.get("_target_") else None
        )
        stopping = dict(conf.get("early_stopping") or {})
        early_stopping = EarlyStopping(**stopping) if stopping.get("patience") is not None else None
        stragglers = build_stragglers(conf)
        link_adaptive_codec(conf, compression, stragglers)
        strategy = instantiate(
            strategy_cfg,
            aggregation=aggregation,
            byzantine=build_attack(conf["attack"], conf["seed"]),
            reference_update=reference,
            privacy=privacy,
            compression=compression,
            selector=selector,
            stragglers=stragglers,
            server_opt=server_opt,
            early_stopping=early_stopping,
        )
        tracker = instantiate(OmegaConf.create(conf["tracking"]))
    except (ValueError, SpecError, TypeError, HydraException) as err:
        raise ConfigError(f"cannot build the experiment: {err}") from err
    if not isinstance(strategy, FlExtFedAvg):
        raise ConfigError(
            f"strategy._target_ must build an FlExtFedAvg, got {type(strategy).__name__}"
        )
    if not isinstance(tracker, Tracker):
        raise ConfigError(f"tracking._target_ must build a Tracker, got {type(tracker).__name__}")
    data_keys: dict[str, Any] = {
        "dataset-spec": dataset_json,
        "partition-spec": spec_to_json(conf["partition"]),
        "model-spec": spec_to_json(conf["model"]),
        "dataset-hash": split.content_hash,
        "local-test-fraction": float(conf["local_test_fraction"]),
        "seed": int(conf["seed"]),
    }
    train_config = ConfigRecord(
        {
            **data_keys,
            "local-epochs": int(conf["local_epochs"]),
            "lr": float(conf["lr"]),
            "momentum": float(conf["momentum"]),
            "batch-size": int(conf["batch_size"]),
        }
    )
    return Built(
        experiment,
        split,
        model,
        partitioner,
        strategy,
        tracker,
        train_config,
        ConfigRecord(data_keys),
    )


def link_adaptive_codec(
    conf: dict[str, Any], compression: Compression | None, stragglers: RoundPolicy | None
) -> None:
    """Adaptive codec tiers follow the simulated network's uplinks (``bandwidth: auto|network``)."""
    if not isinstance(compression, AdaptiveCompression):
        return
    source = ((conf.get("codec") or {}).get("adaptive") or {}).get("bandwidth", "auto")
    if source == "simulated":
        return
    if isinstance(stragglers, StragglerPolicy):
        compression.follow_network(stragglers.network)
    elif source == "network":
        raise ValueError(
            "codec.adaptive.bandwidth=network needs a simulated network "
            "(network=ideal|mobile|mixed); use auto or simulated otherwise"
        )


def build_stragglers(conf: dict[str, Any]) -> RoundPolicy | None:
    """The ``network`` group: virtual clock, measured clock (``measured``) or None (``none``)."""
    n = dict(conf.get("network") or {"profile": "none"})
    profile = n.pop("profile", "none")
    if profile == "none":
        return None
    if profile == "measured":
        return MeasuredStragglers(**n)
    network = SimulatedNetwork(
        profile=profile,
        seed=int(conf["seed"]),
        diurnal=bool(n.pop("diurnal", False)),
        period_rounds=int(n.pop("period_rounds", 24)),
    )
    return StragglerPolicy(network=network, **n)


def root_update_fn(
    split: TrainTestSplit, model: ClassifierNet, conf: dict[str, Any]
) -> Callable[[int, OrderedDict[str, np.ndarray]], torch.Tensor]:
    """The server's own update on its root set (FLTrust), with the clients' local settings."""
    if split.root is None or len(split.root) == 0:
        raise ValueError("this aggregator needs a root set: set dataset.root_size > 0")
    root = split.root
    server_model = copy.deepcopy(model)

    def update(server_round: int, global_arrays: OrderedDict[str, np.ndarray]) -> torch.Tensor:
        set_weights(server_model, global_arrays)
        cfg = TrainConfig(
            epochs=int(conf["local_epochs"]),
            batch_size=int(conf["batch_size"]),
            lr=float(conf["lr"]),
            momentum=float(conf["momentum"]),
            seed=seed_for(int(conf["seed"]), server_round, 1_000_000),
        )
        train_local(server_model, root, cfg)
        spec = ParamSpec.of(global_arrays)
        return spec.flatten(get_weights(server_model)) - spec.flatten(global_arrays)

    return update


def build_attack(spec: dict[str, Any], seed: int) -> ByzantineSimulation | None:
    """The simulated attack of the ``attack`` group, or None for ``attack=none``.

    Without an omniscient attack or a client role there is nothing to simulate (the
    ``num_byzantine`` designated clients then behave honestly).
    """
    omniscient = spec.get("omniscient")
    if not spec.get("num_byzantine") or (omniscient is None and spec.get("client_role") is None):
        return None
    return ByzantineSimulation(
        num_byzantine=int(spec["num_byzantine"]),
        omniscient=build_from_spec(omniscient, OmniscientAttack) if omniscient else None,
        client_role=spec.get("client_role"),
        seed=seed,
    )


def check_partitions(built: Built, num_partitions: int) -> None:
    """Partition the training set for this federation size now, so a bad split fails early."""
    try:
        sizes = [len(p) for p in built.partitioner(built.split.train.y, num_partitions)]
    except ValueError as err:
        raise ConfigError(f"partition cannot split for {num_partitions} nodes: {err}") from err
    log.info("Partition sizes for %d nodes: %s", num_partitions, sizes)


def check_aggregation(built: Built, num_nodes: int) -> None:
    """The rule must be able to aggregate the updates a round asks for (e.g. Krum's n > 2f + 2)."""
    try:
        built.strategy.check_federation(num_nodes)
    except ValueError as err:
        raise ConfigError(str(err)) from err


def check_privacy(built: Built, num_nodes: int) -> None:
    """Privacy checks that need the federation's size: budget left (DP-SGD), noise vs update."""
    dim = sum(int(a.size) for a in get_weights(built.model).values())
    try:
        check_privacy_federation(
            built.strategy.privacy, built.experiment.resolved(), num_nodes=num_nodes, dim=dim
        )
    except ValueError as err:
        raise ConfigError(str(err)) from err


def run_name(experiment: Experiment) -> str:
    """Readable MLflow run name: the choices, the seed and what differs from the defaults.

    ``fedavg-krum-vs-alie-digits-dirichlet-mlp-seed0 codec=int8 lr=0.1 partition.alpha=0.3``
    (see simulations/naming.py).
    """
    return naming.run_name(experiment)


def run(grid: Grid, built: Built, *, flwr_run_id: int | None = None) -> Result:
    """Run the federation and track it; the tracked run ends FAILED if anything raises.

    A fresh run, or one restarted from a checkpoint (``resume``: same MLflow run, state
    restored; ``rollback_from``: a new run from an earlier global model), see checkpointing.py.
    """
    exp = built.experiment
    restored = restore_point(built)  # a bad checkpoint fails here, before anything is tracked
    tracker = built.tracker
    tags = {
        "fl_ext.version": fl_ext.__version__,
        "flwr.run_id": str(flwr_run_id),
        "dataset.hash": built.split.content_hash,
        **{f"choice.{k}": v for k, v in exp.choices.items()},
    }
    last_logged = -1
    if restored is not None and restored.mode == "resume":
        run_id = restored.checkpoint.state.get("mlflow_run_id")
        try:
            last_logged = tracker.resume(str(run_id)) if run_id else -1
        except ValueError as err:
            raise ConfigError(str(err)) from err
        tracker.set_tags(
            {
                f"resumed.round{restored.first_round}.flwr_run_id": str(flwr_run_id),
                "resumed_from": str(restored.checkpoint.path),
            }
        )
    else:
        tracker.start(run_name=run_name(exp), params=flatten(exp.resolved()), tags=tags)
    try:
        result = _run_tracked(grid, built, restored, last_logged)
    except BaseException as err:
        try:
            tracker.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
        finally:
            tracker.end("KILLED" if built.stopped else "FAILED")
        raise
    tracker.end("KILLED" if built.stopped else "FINISHED")  # KILLED: "killed by user"
    return result


def _run_tracked(grid: Grid, built: Built, restored: Restored | None, last_logged: int) -> Result:
    cfg, tracker = built.experiment.cfg, built.tracker
    conf = built.experiment.resolved()
    if restored is None or restored.mode == "rollback":
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
    store = None
    if cfg.checkpoint.enabled:
        directory = (
            restored.store.directory
            if restored is not None and restored.mode == "resume"
            else Path(cfg.checkpoint.dir or fl_ext_home() / "checkpoints" / _run_key(tracker))
        )
        store = open_store(directory, conf)
        tracker.set_tags({"checkpoint.dir": str(store.directory.resolve())})
        log.info("Signed checkpoints of every round in %s", store.directory.resolve())
    saver = RoundSaver(built, store, tracker.run_id)
    initial = named_array_record(get_weights(built.model))
    first_round = 1
    if restored is not None:
        checkpoint = restored.checkpoint
        initial = named_array_record(checkpoint.arrays)
        first_round = restored.first_round
        built.history = {int(k): float(v) for k, v in checkpoint.state["history"].items()}
        if restored.mode == "resume":
            built.strategy.load_state_dict(
                checkpoint.state["strategy"], checkpoint.tensors, first_round=first_round
            )
            saver.restore(restored)
            restore_ledger(built, checkpoint)
            if last_logged < checkpoint.server_round:  # saved, not yet logged: log it now
                tracker.log_metrics(checkpoint.server_round, checkpoint.state["metrics"])
        else:
            if built.strategy.privacy is not None:
                built.strategy.privacy.reseed_noise(first_round)
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
        on_round_end=tracker.log_metrics,
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


def _register(
    built: Built,
    name: str,
    tags: dict[str, str],
    *,
    server_round: int,
    signature: str,
    aliases: tuple[str, ...],
    artifact_path: str = "model",
) -> str | None:
    """Log ``built.model`` (its current weights) and register it with its round and signature."""
    return built.tracker.log_model(
        built.model,
        input_example=built.split.test.x[:2],
        registered_name=name,
        tags={**tags, "round": str(server_round), "checkpoint_signature": signature},
        artifact_path=artifact_path,
        aliases=aliases,
    )


def central_evaluate(built: Built, server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """Loss and accuracy of the global model on the server's held-out test split."""
    set_weights(built.model, arrays.to_numpy_ndarrays())
    loss, accuracy = evaluate(built.model, built.split.test)
    built.history[server_round] = accuracy
    return MetricRecord({"loss": loss, "accuracy": accuracy})


def finish(built: Built, result: Result, *, num_clients: int, saver: RoundSaver) -> None:
    """Plot, log and register the final and the best model with their FL metadata.

    The registry aliases mean what they say (see :func:`_best_verdict`): a run that aggregated
    no client update registers nothing; a run with a simulated attack registers its final
    model without any alias; a clean run's final model takes ``final``, and its best model
    takes ``best`` only if it beats the current ``@best`` on the same data and held-out split
    (one version carries both when the last round was the best). Each version carries the
    signature of the checkpoint it came from.
    """
    exp, cfg, tracker = built.experiment, built.experiment.cfg, built.tracker
    set_weights(built.model, result.arrays.to_numpy_ndarrays())
    final_acc = (
        built.history.get(max(built.history), float("nan")) if built.history else float("nan")
    )
    tracker.log_png(
        accuracy_plot_png({run_name(exp): built.history}, title="Centralized test accuracy"),
        "accuracy.png",
    )
    partition = dict(exp.resolved()["partition"])
    partition.pop("_target_", None)
    fl_tags = {
        "strategy": exp.choices["strategy"],
        "aggregator": exp.choices["aggregator"],
        "preagg": exp.choices["preagg"],
        "attack": exp.choices["attack"],
        "codec": exp.choices["codec"],
        "rounds": str(cfg.num_rounds),
        "num_clients": str(num_clients),
        "dataset": exp.choices["dataset"],
        "dataset_hash": built.split.content_hash,
        "partition": exp.choices["partition"],
        "partition_params": str(partition),
        "model": exp.choices["model"],
        "final_test_accuracy": f"{final_acc:.4f}",
        "fl_ext_version": fl_ext.__version__,
        **test_split_tags(built),
        "simulated_attack": str(built.strategy.byzantine is not None).lower(),
    }
    privacy = built.strategy.privacy
    if privacy is not None:
        ledger = privacy.ledger
        fl_tags.update(
            {
                "privacy": privacy.mode,
                "dp_delta": f"{ledger.delta:g}",
                "dp_accountant": ledger.accountant,
                **{k: f"{v:.4f}" for k, v in ledger.metrics().items() if k != "dp_delta"},
            }
        )
        tracker.log_text(json.dumps(ledger.to_json(), indent=1), "privacy_ledger.json")
    registered = cfg.tracking.get("registered_model_name") or (
        f"fl-ext-{exp.choices['dataset']}-{exp.choices['model']}"
    )
    started = time.monotonic()
    last_round = (
        saver.last.server_round if saver.last is not None else max(built.history, default=0)
    )
    run_tags = {"final_test_accuracy": f"{final_acc:.4f}"}
    if saver.aggregated_rounds == 0:
        reason = "no round aggregated a client update: the model is the one the run started from"
        log.warning("Model not registered: %s", reason)
        tracker.set_tags({**run_tags, "registered_version": "none", "registry.skipped": reason})
        return
    final_tags = {**fl_tags, "stage": "final", "test_accuracy": repr(float(final_acc))}
    if built.strategy.byzantine is not None or built.stopped is not None:
        why_not = (
            f"simulated attack (attack={exp.choices['attack']})"
            if built.strategy.byzantine is not None
            else f"stopped before its last round ({built.stopped})"
        )
        version = _register(
            built,
            registered,
            {**final_tags, **({"stopped": "true"} if built.stopped else {})},
            server_round=last_round,
            signature=saver.signatures.get(last_round, "none"),
            aliases=(),
        )
        if version is not None:
            log.warning(
                "%s: %s v%s registered with no alias; @final and @best stay where they are",
                why_not[0].upper() + why_not[1:],
                registered,
                version,
            )
        tracker.set_tags({**run_tags, "registered_version": str(version)})
        return
    takes_best, why = _best_verdict(
        built.tracker.alias_tags(registered, "best"), fl_tags, saver.best_accuracy
    )
    best_is_final = saver.best_round in (last_round, -1)
    version = _register(
        built,
        registered,
        final_tags,
        server_round=last_round,
        signature=saver.signatures.get(last_round, "none"),
        aliases=("final", "best") if best_is_final and takes_best else ("final",),
    )
    if version is None:  # tracking=none or tracking.register_model=false: nothing registered
        tracker.set_tags({**run_tags, "registered_version": "none"})
        log.info("Final test accuracy %.4f; model not registered (registry off)", final_acc)
        return
    tracker.set_tags({**run_tags, "registered_version": str(version), "registry.best": why})
    if takes_best and not best_is_final:
        set_weights(built.model, saver.best_arrays)
        best_version = _register(
            built,
            registered,
            {
                **fl_tags,
                "stage": "best",
                "test_accuracy": repr(float(saver.best_accuracy)),  # full precision: compared
                "best_test_accuracy": f"{saver.best_accuracy:.4f}",
            },
            server_round=saver.best_round,
            signature=saver.signatures.get(saver.best_round, "none"),
            aliases=("best",),
            artifact_path="best_model",
        )
        tracker.set_tags({"best_round": str(saver.best_round), "best_version": str(best_version)})
    (log.info if takes_best else log.warning)("Registry @best: %s", why)
    log.info(
        "Final test accuracy %.4f; model logged in %.1fs (registered: %s v%s)",
        final_acc,
        time.monotonic() - started,
        registered,
        version,
    )


def test_split_tags(built: Built) -> dict[str, str]:
    """What defines the held-out split the accuracies are measured on (registry tags)."""
    spec = dict(built.experiment.resolved()["dataset"])
    spec.pop("_target_", None)
    test = built.split.test
    return {
        "test_split_hash": content_hash(test.x, test.y),
        "test_split": f"{len(test)} examples, {spec}",
    }


def _best_verdict(
    current: dict[str, str] | None, tags: dict[str, str], best_accuracy: float
) -> tuple[bool, str]:
    """Whether this clean run's best model takes ``@best`` from ``current``, and why.

    It does when there is no ``@best`` yet, when the current one cannot defend it (a version
    from a simulated attack, or one registered before the split was recorded), or when it
    beats it strictly on the same dataset (content hash) and the same held-out split (hash of
    the test examples). A ``@best`` measured on other data or another split is not comparable
    and stays.
    """
    if current is None:
        return True, f"first @best ({best_accuracy:.4f})"
    v = current.get("version", "?")
    if current.get("simulated_attack", "false") != "false" or "test_split_hash" not in current:
        return True, (
            f"@best v{v} (attack={current.get('attack', '?')}, registered without a recorded "
            f"clean split) does not defend it: moved ({best_accuracy:.4f})"
        )
    if (current.get("dataset_hash"), current["test_split_hash"]) != (
        tags["dataset_hash"],
        tags["test_split_hash"],
    ):
        return False, (
            f"@best v{v} was measured on another dataset or held-out split "
            f"({current.get('test_split', '?')}): not comparable, it stays; use "
            "tracking.registered_model_name=<name> to keep a @best for this split"
        )
    theirs = float(current.get("test_accuracy", "nan"))
    if best_accuracy > theirs:
        return True, f"{best_accuracy:.4f} beats @best v{v} ({theirs:.4f}): moved"
    return False, f"{best_accuracy:.4f} does not beat @best v{v} ({theirs:.4f}): it stays"
