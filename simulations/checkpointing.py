"""Per-round signed checkpoints of an experiment, and the two ways back: resume and rollback.

- Every completed round is saved (global model, strategy state, metrics, accuracy history,
  the MLflow run id, a copy of the privacy ledger) before its metrics are logged, so a
  crash never leaves a logged round without its checkpoint.
- ``resume=<dir>`` continues the interrupted run after its last completed round: same MLflow
  run, same checkpoint directory, the strategy state restored; a round logged or not is
  repeated or lost by none. The config must be the one the run started with (only
  ``num_rounds``, timeouts and checkpoint settings may change).
- ``rollback_from=<dir> rollback_round=N`` starts a *new* run from round N's global model
  (a poisoned model found later, say), numbering rounds from N+1, with any config that keeps
  the model's schema. Privacy spent is never rolled back: the ledger keeps every round.
"""

from __future__ import annotations

import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ArrayRecord

from fl_ext.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from fl_ext.compat import schema_hash
from fl_ext.params import get_weights
from fl_ext.security import load_or_create_signing_key
from fl_ext.tracking.paths import fl_ext_home
from flwr_records import record_to_named
from simulations.config import ConfigError

if TYPE_CHECKING:
    from simulations.experiment import Built

log = logging.getLogger("fl_ext")

# Keys a resumed run may change: they do not alter what was computed so far.
RESUMABLE_KEYS = frozenset(
    {"num_rounds", "round_timeout", "node_wait_timeout", "checkpoint", "resume"}
)


def signing_key_path(conf: dict[str, Any]) -> Path:
    """``checkpoint.signing_key`` or ``$FL_EXT_HOME/keys/checkpoint_ed25519.pem``."""
    configured = (conf.get("checkpoint") or {}).get("signing_key")
    return Path(configured) if configured else fl_ext_home() / "keys" / "checkpoint_ed25519.pem"


def open_store(directory: str | Path, conf: dict[str, Any]) -> CheckpointStore:
    """A store in ``directory`` that signs and verifies with the configured key."""
    key = load_or_create_signing_key(signing_key_path(conf))
    keep = (conf.get("checkpoint") or {}).get("keep_last")
    try:
        return CheckpointStore(directory, signing_key=key, keep_last=keep)
    except ValueError as err:
        raise ConfigError(str(err)) from err


@dataclass
class Restored:
    """Where a resumed or rolled-back run starts from."""

    mode: str  # "resume" | "rollback"
    checkpoint: Checkpoint
    store: CheckpointStore

    @property
    def first_round(self) -> int:
        return self.checkpoint.server_round + 1


def restore_point(built: Built) -> Restored | None:
    """The checkpoint named by ``resume`` or ``rollback_from``, verified; None for a fresh run."""
    conf = built.experiment.resolved()
    resume, rollback = conf.get("resume"), conf.get("rollback_from")
    if resume and rollback:
        raise ConfigError("resume and rollback_from exclude each other: choose one")
    if not resume and not rollback:
        if conf.get("rollback_round") is not None:
            raise ConfigError("rollback_round needs rollback_from=<checkpoint directory>")
        return None
    directory = Path(str(resume or rollback)).expanduser()
    key = "resume" if resume else "rollback_from"
    if not directory.is_dir():
        raise ConfigError(f"{key}: checkpoint directory {directory} does not exist")
    round_dir = re.fullmatch(r"round-(\d{6})", directory.name)
    if round_dir or (directory / "manifest.json").exists():
        hint = f"{key}={directory.parent}"
        if round_dir and not resume:
            hint += f" rollback_round={int(round_dir.group(1))}"
        raise ConfigError(
            f"{key}={directory} is one round's checkpoint; pass the run's checkpoint directory "
            f"(the folder of the round-NNNNNN folders): {hint}"
        )
    store = open_store(directory, conf)
    try:
        checkpoint = store.load(None if resume else conf.get("rollback_round"))
    except CheckpointError as err:
        raise ConfigError(f"cannot restart from {directory}: {err}") from err
    model_schema = schema_hash(get_weights(built.model))
    if schema_hash(checkpoint.arrays) != model_schema:
        raise ConfigError(
            f"{checkpoint.path} holds a model of another schema than model="
            f"{built.experiment.choices['model']} on this dataset: cannot restart from it"
        )
    if checkpoint.server_round >= conf["num_rounds"]:
        raise ConfigError(
            f"{checkpoint.path} is round {checkpoint.server_round} and num_rounds is "
            f"{conf['num_rounds']}: nothing left to run (raise num_rounds to train longer)"
        )
    if resume:
        _check_same_config(checkpoint.state.get("config", {}), conf, checkpoint.path)
        return Restored("resume", checkpoint, store)
    return Restored("rollback", checkpoint, store)


def _check_same_config(saved: dict[str, Any], current: dict[str, Any], where: Path) -> None:
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS - {"rollback_from", "rollback_round"}
    changed = sorted(k for k in keys if saved.get(k) != current.get(k))
    if changed:
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:5])
        raise ConfigError(
            f"resume needs the config of the interrupted run ({where}); changed: {detail}. "
            "Use rollback_from to start a new run from a checkpoint with another config."
        )


@dataclass
class RoundSaver:
    """The strategy's ``checkpoint_fn``: save each round, remember the best model."""

    built: Built
    store: CheckpointStore | None
    run_id: str | None
    best_round: int = -1
    best_accuracy: float = -np.inf
    best_arrays: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    last: Checkpoint | None = None
    signatures: dict[int, str] = field(default_factory=dict)
    aggregated_rounds: int = 0  # rounds that aggregated at least one client update
    config: dict[str, Any] = field(init=False)  # resolved once: it is the same every round

    def __post_init__(self) -> None:
        self.config = self.built.experiment.resolved()

    def __call__(self, server_round: int, arrays: ArrayRecord, metrics: dict[str, float]) -> None:
        named = record_to_named(arrays)
        if not metrics.get("round_skipped") and metrics.get("clients_valid", 0) > 0:
            self.aggregated_rounds += 1
        accuracy = metrics.get("test_accuracy", self.built.history.get(server_round, np.nan))
        if np.isfinite(accuracy) and accuracy > self.best_accuracy:
            self.best_round, self.best_accuracy = server_round, float(accuracy)
            self.best_arrays = OrderedDict((k, v.copy()) for k, v in named.items())
        if self.store is None:
            return
        strategy_state, tensors = self.built.strategy.state_dict()
        privacy = self.built.strategy.privacy
        state = {
            "round": server_round,
            "strategy": strategy_state,
            "metrics": metrics,
            "history": {str(k): v for k, v in self.built.history.items()},
            "best": {"round": self.best_round, "accuracy": self.best_accuracy},
            "aggregated_rounds": self.aggregated_rounds,
            "mlflow_run_id": self.run_id,
            "config": self.config,
            "privacy_ledger": privacy.ledger.to_json() if privacy is not None else None,
        }
        self.last = self.store.save(
            server_round, named, state, tensors, protect=frozenset({self.best_round})
        )
        self.signatures[server_round] = self.last.signature
        log.debug("Checkpoint of round %d: %s", server_round, self.last.path)

    def restore(self, restored: Restored) -> None:
        """Continue the best-model bookkeeping of a resumed run."""
        recorded = restored.checkpoint.state.get("best", {})
        self.best_round = int(recorded.get("round", -1))
        self.best_accuracy = float(recorded.get("accuracy", -np.inf))
        self.aggregated_rounds = int(
            restored.checkpoint.state.get("aggregated_rounds", restored.checkpoint.server_round)
        )
        if self.best_round == restored.checkpoint.server_round:
            self.best_arrays = restored.checkpoint.arrays
        elif self.best_round >= 0 and self.best_round in restored.store.rounds():
            best = restored.store.load(self.best_round)  # verified once, both fields from it
            self.best_arrays = best.arrays
            self.signatures[self.best_round] = best.signature
        self.signatures[restored.checkpoint.server_round] = restored.checkpoint.signature
        self.last = restored.checkpoint


def restore_ledger(built: Built, checkpoint: Checkpoint) -> None:
    """Keep the longer of the ledger file and the checkpoint's copy of it.

    The file is authoritative; if it recorded fewer rounds than the copy (lost or replaced),
    the copy is written back: spending never goes backwards.
    """
    privacy = built.strategy.privacy
    saved = checkpoint.state.get("privacy_ledger")
    if privacy is None or not saved:
        return
    ledger = privacy.ledger
    if len(ledger.rounds) >= len(saved.get("rounds", [])):
        return
    log.warning(
        "Privacy ledger %s has %d rounds, the checkpoint's copy %d: restoring the copy",
        ledger.path,
        len(ledger.rounds),
        len(saved["rounds"]),
    )
    if ledger.path is None:
        raise ConfigError("the privacy ledger has no file to restore the checkpoint's copy into")
    Path(ledger.path).write_text(json.dumps(saved))
    privacy.ledger = type(ledger).open(
        ledger.path,
        accountant=ledger.accountant,
        delta=ledger.delta,
        target_epsilon=ledger.target_epsilon,
        client_target_epsilon=ledger.client_target_epsilon,
    )
