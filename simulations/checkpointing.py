"""Per-round signed checkpoints of an experiment, and the two ways back: resume and rollback.

- Every completed round is saved (global model, strategy state with a copy of the privacy
  ledger, metrics, accuracy history, the MLflow run id) before its metrics are logged, so a
  crash never leaves a logged round without its checkpoint.
- ``resume=<dir>`` continues the interrupted run after its last completed round: same MLflow
  run, same checkpoint directory, the strategy state restored; a round logged or not is
  repeated or lost by none. The config must be the one the run started with (only
  ``num_rounds``, timeouts and checkpoint settings may change).
- ``rollback_from=<dir> rollback_round=N`` starts a *new* run from round N's global model
  (a poisoned model found later, say), numbering rounds from N+1, with any config that keeps
  the model's schema. Privacy spent is never rolled back: the ledger keeps every round.

This module knows the run's parts only through what it saves of them: a :class:`Stateful`
strategy, a :class:`LedgerOwner` privacy side, the accuracy history and the resolved config
(all given to :class:`RoundSaver`). :meth:`RoundSaver.restore` is the one place a checkpoint
is read back into them.
"""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import ArrayRecord

from fl_ext.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from fl_ext.compat import schema_hash
from fl_ext.security import load_or_create_signing_key
from fl_ext.tracking.paths import fl_ext_home
from flwr_records import record_to_named
from simulations.config import ConfigError

log = logging.getLogger("fl_ext")


class Stateful(Protocol):
    """What a checkpoint needs of the strategy: its state out, and back in."""

    def state_dict(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able state and array state: everything the next round depends on."""
        ...

    def load_state_dict(
        self, state: dict[str, Any], tensors: dict[str, np.ndarray], *, first_round: int
    ) -> None:
        """Restore :meth:`state_dict` output before running from ``first_round``."""
        ...


class LedgerOwner(Protocol):
    """The privacy side, whose noise a rolled-back run draws anew.

    (Its ledger's copy is part of the strategy state: the privacy part restores the longer
    of its ledger file and the copy.)
    """

    def reseed_noise(self, first_round: int) -> None:
        """Draw new noise from ``first_round`` on (a rolled-back run)."""
        ...


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

    @property
    def mlflow_run_id(self) -> str | None:
        """The MLflow run a resumed run continues (None: a rollback, or none was tracked)."""
        run_id = self.checkpoint.state.get("mlflow_run_id") if self.mode == "resume" else None
        return str(run_id) if run_id else None


def restore_point(conf: dict[str, Any], *, model_schema: str, model_name: str) -> Restored | None:
    """The checkpoint named by ``resume`` or ``rollback_from``, verified; None for a fresh run.

    ``conf`` is the resolved config, ``model_schema`` the :func:`~fl_ext.compat.schema_hash`
    of the model this run builds (``model_name``, its config choice, names it in errors).
    """
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
    if schema_hash(checkpoint.arrays) != model_schema:
        raise ConfigError(
            f"{checkpoint.path} holds a model of another schema than model="
            f"{model_name} on this dataset: cannot restart from it"
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
    """The strategy's ``checkpoint_fn``: save each round, remember the best model.

    It saves (and :meth:`restore` reads back) the ``strategy``'s state, the accuracy
    ``history`` (the dict central evaluation fills; restored in place; the strategy state
    holds the privacy ledger's copy), the resolved ``config`` (a resume must keep it) and the MLflow
    ``run_id``. ``store`` and ``run_id`` are known once tracking started: see :meth:`attach`.
    """

    strategy: Stateful
    privacy: LedgerOwner | None
    history: dict[int, float]
    config: dict[str, Any]  # resolved once: it is the same every round
    store: CheckpointStore | None = None
    run_id: str | None = None
    best_round: int = -1
    best_accuracy: float = -np.inf
    best_arrays: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    last: Checkpoint | None = None
    signatures: dict[int, str] = field(default_factory=dict)
    aggregated_rounds: int = 0  # rounds that aggregated at least one client update

    def attach(self, store: CheckpointStore | None, *, run_id: str | None) -> None:
        """Save every round into ``store`` (None: remember the best model only), for ``run_id``."""
        self.store, self.run_id = store, run_id

    def __call__(self, server_round: int, arrays: ArrayRecord, metrics: dict[str, float]) -> None:
        named = record_to_named(arrays)
        if not metrics.get("round_skipped") and metrics.get("clients_valid", 0) > 0:
            self.aggregated_rounds += 1
        accuracy = metrics.get("test_accuracy", self.history.get(server_round, np.nan))
        if np.isfinite(accuracy) and accuracy > self.best_accuracy:
            self.best_round, self.best_accuracy = server_round, float(accuracy)
            self.best_arrays = OrderedDict((k, v.copy()) for k, v in named.items())
        if self.store is None:
            return
        strategy_state, tensors = self.strategy.state_dict()
        state = {
            "round": server_round,
            "strategy": strategy_state,
            "metrics": metrics,
            "history": {str(k): v for k, v in self.history.items()},
            "best": {"round": self.best_round, "accuracy": self.best_accuracy},
            "aggregated_rounds": self.aggregated_rounds,
            "mlflow_run_id": self.run_id,
            "config": self.config,
        }
        self.last = self.store.save(
            server_round, named, state, tensors, protect=frozenset({self.best_round})
        )
        self.signatures[server_round] = self.last.signature
        log.debug("Checkpoint of round %d: %s", server_round, self.last.path)

    def restore(self, *, model_schema: str, model_name: str) -> Restored | None:
        """Load the checkpoint ``resume``/``rollback_from`` names and put the run back on it.

        The one place a restart is read back (None: a fresh run, nothing changed); call it
        before tracking starts, so a bad checkpoint fails before anything is tracked. Both
        modes restore the accuracy history; a resume also the strategy state (with the privacy
        ledger: the longer of file and copy) and the best-model bookkeeping, and its
        :attr:`Restored.mlflow_run_id` names the run to continue; a rollback draws new noise.
        """
        restored = restore_point(self.config, model_schema=model_schema, model_name=model_name)
        if restored is None:
            return None
        checkpoint = restored.checkpoint
        self.history.clear()
        self.history.update({int(k): float(v) for k, v in checkpoint.state["history"].items()})
        if restored.mode == "rollback":
            if self.privacy is not None:
                self.privacy.reseed_noise(restored.first_round)
            return restored
        try:  # the privacy part also keeps the longer of its ledger file and the copy
            self.strategy.load_state_dict(
                checkpoint.state["strategy"], checkpoint.tensors, first_round=restored.first_round
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"cannot resume from {checkpoint.path}: {err}") from err
        recorded = checkpoint.state.get("best", {})
        self.best_round = int(recorded.get("round", -1))
        self.best_accuracy = float(recorded.get("accuracy", -np.inf))
        self.aggregated_rounds = int(
            checkpoint.state.get("aggregated_rounds", checkpoint.server_round)
        )
        if self.best_round == checkpoint.server_round:
            self.best_arrays = checkpoint.arrays
        elif self.best_round >= 0 and self.best_round in restored.store.rounds():
            best = restored.store.load(self.best_round)  # verified once, both fields from it
            self.best_arrays = best.arrays
            self.signatures[self.best_round] = best.signature
        self.signatures[checkpoint.server_round] = checkpoint.signature
        self.last = checkpoint
        return restored
