"""The tracker interface the ServerApp talks to, and the do-nothing tracker."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn


@dataclass(frozen=True)
class DatasetRecord:
    """One data version a run used: who holds it, its digest, where it comes from.

    ``context``: ``training`` (a client's partition) or ``evaluation`` (the server's held-out
    split). ``profile``: small facts about it (examples, node), never the data.
    """

    name: str
    digest: str
    source: str
    context: str = "training"
    profile: Mapping[str, Any] = field(default_factory=dict)


class Tracker:
    """Records one run: params, per-round metrics, artifacts, the final model, the status.

    The base class records nothing (``tracking=none``); :class:`MlflowTracker` overrides it.
    """

    run_id: str | None = None

    def start(self, *, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Open the run."""

    def resume(self, run_id: str) -> int:
        """Reopen run ``run_id`` (a restarted experiment); returns its last logged round, or -1."""
        return -1

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log one round's metrics (flat names, e.g. ``test_accuracy``) in one batch.

        A tracker may store them under other names (MLflow: ``accuracy/test``, see
        metric_names.py); the strategy's names stay flat.
        """

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach or update run tags."""

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store a text artifact (e.g. the resolved config)."""

    def log_datasets(self, datasets: Sequence[DatasetRecord]) -> None:
        """Record the data versions the run used (MLflow: dataset inputs of the run)."""

    def read_text(self, artifact_file: str) -> str | None:
        """A text artifact of the current run, None if it has none (a resumed run reads back)."""
        return None

    def log_png(self, png_bytes: bytes, artifact_file: str) -> None:
        """Store an image artifact."""

    def log_model(
        self,
        model: nn.Module,
        *,
        input_example: np.ndarray,
        registered_name: str | None,
        tags: Mapping[str, str],
        artifact_path: str = "model",
        aliases: tuple[str, ...] = (),
    ) -> str | None:
        """Log the model and register it when ``registered_name`` is set.

        ``input_example`` gives the logged model its signature; each of ``aliases``
        (``final``, ``best``) then points at the new version. Returns the version.
        """
        return None

    def alias_tags(self, registered_name: str, alias: str) -> dict[str, str] | None:
        """Tags (plus ``version``) of the version ``alias`` points at, or None if unset."""
        return None

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``FINISHED`` or ``FAILED``."""


class NullTracker(Tracker):
    """Tracking switched off: every call is a no-op."""

    def __init__(self, **_: Any) -> None:
        pass
