"""Build every component of an experiment from its config, and check it fits the federation.

Everything that can be wrong with a config (a bad alpha, a model that does not fit the
input, too many partitions) is found in :func:`build` before the first round, or by the
``check_*`` functions once the federation's size is known.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fl_ext.aggregators import Aggregator, RobustAggregation
from fl_ext.data import Partitioner
from fl_ext.data.datasets import ArrayDataset, TrainTestSplit
from fl_ext.data.federated import load_split
from fl_ext.data.normalize import NORMALIZE_KEY, Normalization
from fl_ext.early_stopping import EarlyStopping
from fl_ext.models import ClassifierNet
from fl_ext.models.normalized import Normalized
from fl_ext.params import ParamSpec, get_weights, set_weights
from fl_ext.preagg import PreAggregator
from fl_ext.selection import Selector
from fl_ext.server_opt import ServerOptimizer
from fl_ext.specs import SpecError, build_from_spec, spec_to_json
from fl_ext.telemetry import FreeRiderDetector, QuarantinePolicy, SuspicionDetector
from fl_ext.tracking import Tracker
from fl_ext.training import TrainConfig, seed_for, train_local
from simulations.adapter_build import build_adapter
from simulations.attack_build import build_attack
from simulations.compression_build import build_compression
from simulations.config import ConfigError, Experiment
from simulations.group_build import build_group
from simulations.network_build import build_network
from simulations.privacy_build import build_privacy, check_privacy_federation
from simulations.secagg_build import build_secagg
from simulations.submodel_build import build_submodels
from strategies import FlExtFedAvg
from strategies.buffered import BufferedAsync
from strategies.compression import AdaptiveCompression, Compression
from strategies.data_versions import DataVersions
from strategies.dropout import SimulatedDropout
from strategies.federated_stats import FederatedStatistics
from strategies.governance import Quarantine, Telemetry
from strategies.privacy import ClientLevelDP, SampleLevelDP
from strategies.rollback import Rollback
from strategies.stage import Stage
from strategies.stragglers import RoundPolicy, StragglerPolicy
from strategies.submodels import SubModels

log = logging.getLogger("fl_ext")


@dataclass
class Built:
    """The experiment's live parts."""

    experiment: Experiment
    split: TrainTestSplit
    model: torch.nn.Module  # a ClassifierNet, or one with adapters (adapter=lora)
    partitioner: Partitioner
    strategy: FlExtFedAvg
    tracker: Tracker
    train_config: ConfigRecord
    evaluate_config: ConfigRecord
    history: dict[int, float] = field(default_factory=dict)
    last_fed_eval: float | None = None  # the latest round's federated accuracy (registry tag)
    stopped: str | None = None  # why the run was stopped from outside (`flwr stop`)
    data_versions: DataVersions = field(default_factory=DataVersions)  # clients' data, by hash
    statistics: FederatedStatistics | None = None  # preprocessing=federated_stats
    submodels: SubModels | None = None  # submodel=heterofl|fjord|fedrolex: widths evaluated
    normalization: Normalization | None = None  # its result, once the phase ran
    _normalized_test: ArrayDataset | None = None

    def normalize_with(self, normalization: Normalization) -> None:
        """Every client and the server's evaluation use ``normalization`` from now on."""
        self.normalization, self._normalized_test = normalization, None
        entry = {NORMALIZE_KEY: normalization.to_json()}
        self.train_config = ConfigRecord({**dict(self.train_config), **entry})
        self.evaluate_config = ConfigRecord({**dict(self.evaluate_config), **entry})

    def server_test(self) -> ArrayDataset:
        """The held-out split as the model sees it (normalised when the federation is)."""
        if self.normalization is None:
            return self.split.test
        if self._normalized_test is None:
            self._normalized_test = self.normalization.apply(self.split.test)
        return self._normalized_test

    def served_model(self) -> torch.nn.Module:
        """What is registered: the model, behind its normalisation when there is one."""
        if self.normalization is None:
            return self.model
        return Normalized(self.model, self.normalization)


def build(experiment: Experiment) -> Built:
    """Instantiate dataset, partitioner, model, strategy and tracker; ConfigError if any fails."""
    conf = experiment.resolved()
    try:
        dataset_json = spec_to_json(conf["dataset"])
        split = load_split(dataset_json)
        dataset_json = pinned_dataset(conf["dataset"], split, dataset_json)
        partitioner = build_from_spec(conf["partition"], Partitioner)
        torch.manual_seed(conf["seed"])
        model: torch.nn.Module = build_from_spec(
            conf["model"],
            ClassifierNet,
            input_shape=split.input_shape,
            num_classes=split.num_classes,
        )
        model, adapter = build_adapter(conf, model)
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
        stragglers = build_network(conf)
        link_adaptive_codec(conf, compression, stragglers)
        submodel = build_submodels(
            conf, model, split.input_shape, compression=compression, stragglers=stragglers,
            privacy=privacy,
        )  # fmt: skip
        if adapter is not None and isinstance(privacy, SampleLevelDP):
            raise ValueError(
                "adapter=lora with privacy=dp_sgd is not supported yet (Opacus on a peft model "
                "is untested here): use privacy=client_level or privacy=none"
            )
        driver = build_driver(conf, privacy, stragglers)
        if driver is not None:
            stragglers = None  # the asynchronous driver keeps the clock itself
        data_versions = DataVersions()
        size = sum(int(a.size) for a in get_weights(model).values())
        secure = build_secagg(conf, size=size)
        if secure is not None and strategy_cfg.get("max_update_norm") is not None:
            log.warning(
                "strategy.max_update_norm=%s is not checked under secure aggregation (the "
                "server sees masked vectors only): clients clip to secagg.clip_range=%s instead",
                strategy_cfg.max_update_norm,
                secure.clip_range,
            )
            strategy_cfg.max_update_norm = None
        strategy = instantiate(
            strategy_cfg,
            aggregation=aggregation,
            byzantine=build_attack(conf),
            reference_update=reference,
            privacy=privacy,
            compression=compression,
            selector=selector,
            stragglers=stragglers,
            server_opt=server_opt,
            early_stopping=early_stopping,
            secure_aggregation=secure,
            stages=[
                *build_dropout(conf, secure is not None),
                data_versions,
                *([submodel] if submodel is not None else []),
                *(adapter.stages() if adapter is not None else []),
                *build_rollback(conf),
                *build_governance(conf),
            ],
            driver=driver,
        )
        tracker = instantiate(OmegaConf.create(conf["tracking"]))
        statistics = build_statistics(conf, aggregation, privacy, secure is not None)
    except (ValueError, SpecError, TypeError, HydraException) as err:
        raise ConfigError(f"cannot build the experiment: {err}") from err
    if not isinstance(strategy, FlExtFedAvg):
        raise ConfigError(
            f"strategy._target_ must build an FlExtFedAvg, got {type(strategy).__name__}"
        )
    link_telemetry_truth(strategy)
    if not isinstance(tracker, Tracker):
        raise ConfigError(f"tracking._target_ must build a Tracker, got {type(tracker).__name__}")
    data_keys: dict[str, Any] = {
        "dataset-spec": dataset_json,
        "partition-spec": spec_to_json(conf["partition"]),
        "model-spec": spec_to_json(conf["model"]),
        "dataset-hash": split.content_hash,
        "local-test-fraction": float(conf["local_test_fraction"]),
        "seed": int(conf["seed"]),
        **(adapter.entry() if adapter is not None else {}),
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
        data_versions=data_versions,
        statistics=statistics,
        submodels=submodel,
    )


def pinned_dataset(spec: dict[str, Any], split: TrainTestSplit, spec_json: str) -> str:
    """The dataset spec clients get: a DVC branch or tag replaced by the commit it named.

    A branch can move during a run; the commit the server resolved cannot, so every client
    reads the bytes the server read (their content hash is checked too). ``rev: null`` (the
    working tree) is left as it is: the working tree may differ from any commit.
    """
    commit = split.provenance.get("dvc_commit")
    if not commit or spec.get("rev") in (None, commit):
        return spec_json
    return spec_to_json({**spec, "rev": commit})


def build_statistics(
    conf: dict[str, Any], aggregation: RobustAggregation, privacy: object, secure: bool
) -> FederatedStatistics | None:
    """The federated-statistics phase ``preprocessing=federated_stats`` asks for, checked."""
    stats = build_group("preprocessing", conf, FederatedStatistics)
    if stats is None:
        return None
    if secure:
        raise ValueError(
            "preprocessing=federated_stats with secagg: the statistics phase does not use the "
            "secure sum yet, and the clients' moments would reach the server in the clear"
        )
    if aggregation.needs_reference:
        raise ValueError(
            "preprocessing=federated_stats with a rule that trains on the server's root set "
            f"({conf['aggregator'].get('_target_')}): the root set is not normalised yet"
        )
    if stats.noise_multiplier > 0 and not isinstance(privacy, SampleLevelDP):
        raise ValueError(
            "preprocessing.noise_multiplier > 0 needs privacy=dp_sgd: the release is recorded "
            "in each client's sample-level ledger"
        )
    return stats


def build_driver(
    conf: dict[str, Any], privacy: object, stragglers: RoundPolicy | None
) -> BufferedAsync | None:
    """The loop ``driver`` asks for: None for ``sync`` (the engine's default), or FedBuff."""
    driver = build_group("driver", conf, BufferedAsync)
    if driver is None:
        return None
    if (conf.get("secagg") or {}).get("_target_"):
        raise ValueError(
            "driver=fedbuff with secagg: secure aggregation needs rounds (driver=sync)"
        )
    if isinstance(privacy, ClientLevelDP):
        raise ValueError(
            "driver=fedbuff with privacy=client_level: Poisson-amplified client-level DP needs "
            "rounds of sampled clients; use driver=sync (sample-level DP-SGD works with fedbuff)"
        )
    if isinstance(stragglers, StragglerPolicy):
        driver.network = stragglers.network  # arrivals, availability, dropouts simulated
        driver.seconds_per_example = stragglers.seconds_per_example  # the rounds' compute model
    elif stragglers is not None:
        raise ValueError(
            "driver=fedbuff measures reply times itself: use network=none on a deployment, or "
            "a simulated network (ideal|mobile|mixed)"
        )
    if driver.job_timeout_s is None:
        driver.job_timeout_s = float(conf["round_timeout"])
    return driver


def build_governance(conf: dict[str, Any]) -> list[Stage]:
    """Telemetry and quarantine stages as ``telemetry.enabled`` / ``quarantine.enabled`` say."""
    out: list[Stage] = []
    tel, quar = dict(conf.get("telemetry") or {}), dict(conf.get("quarantine") or {})
    if tel.pop("enabled", False):
        out.append(Telemetry(**tel))
    if quar.pop("enabled", False):
        window, free = quar.pop("window", 5), quar.pop("free_riders", True)
        min_rounds = quar.pop("min_rounds", 3)
        out.append(
            Quarantine(
                policy=QuarantinePolicy(**quar),
                detector=SuspicionDetector(window=window),
                free_riders=FreeRiderDetector(seed=int(conf["seed"])) if free else None,
                min_rounds=min_rounds,
            )
        )
    return out


def link_telemetry_truth(strategy: FlExtFedAvg) -> None:
    """In simulation, telemetry knows which nodes the attack made Byzantine (its plots)."""
    byzantine = strategy.byzantine
    for stage in strategy.stages:
        if isinstance(stage, Telemetry) and byzantine is not None:
            stage.truth = byzantine.is_byzantine


def build_rollback(conf: dict[str, Any]) -> list[Rollback]:
    """The rollback stage when ``rollback.max_drop`` is set (it needs centralized evaluation)."""
    max_drop = (conf.get("rollback") or {}).get("max_drop")
    return [] if max_drop is None else [Rollback(max_drop=float(max_drop))]


def build_dropout(conf: dict[str, Any], secure: bool) -> list[SimulatedDropout]:
    """The simulated-dropout stage ``dropout.fraction > 0`` asks for (none otherwise)."""
    spec = dict(conf.get("dropout") or {})
    unknown = sorted(set(spec) - {"fraction", "phase"})
    if unknown:
        raise ValueError(f"dropout.{unknown[0]} is not a setting; settings: fraction, phase")
    fraction, phase = spec.get("fraction", 0.0), spec.get("phase", "train")
    if not fraction:
        return []
    if phase != "train" and not secure:
        raise ValueError(f"dropout.phase={phase} needs secure aggregation; without it: train")
    return [SimulatedDropout(fraction=fraction, phase=phase, seed=int(conf["seed"]))]


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


def root_update_fn(
    split: TrainTestSplit, model: torch.nn.Module, conf: dict[str, Any]
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
