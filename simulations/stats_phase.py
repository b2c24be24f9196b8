"""Run the federated-statistics phase for an experiment, or take its result from the run.

A fresh run queries the clients and logs the result as ``federated_stats.json`` (artifact)
with ``stats.*`` tags; a resumed run reads that artifact back instead of asking again (a
noisy release would spend privacy twice and differ). Either way every later train and
evaluate message carries the normalisation, and the registered model includes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from flwr.serverapp import Grid

from fl_ext.data.normalize import Normalization
from fl_ext.privacy.accountants import GaussianSteps
from simulations.build import Built
from strategies.federated_stats import StatsResult
from strategies.privacy import SampleLevelDP

log = logging.getLogger("fl_ext")
ARTIFACT = "federated_stats.json"


def apply_statistics(built: Built, grid: Grid, nodes: list[int], *, resumed: bool) -> None:
    """Normalise the federation with its statistics (``preprocessing=federated_stats``)."""
    if built.statistics is None:
        return
    if resumed:
        saved = _logged_result(built)
        if saved is not None:
            built.normalize_with(Normalization.of(saved["mean"], saved["std"]))
            log.info("Federated statistics of the resumed run reused: %s", ARTIFACT)
            return
    result = built.statistics.run(
        grid,
        nodes,
        built.evaluate_config,
        input_shape=built.split.input_shape,
        record_spend=_ledger_spend(built),
    )
    built.normalize_with(result.normalization())
    for node, version in result.data_versions.items():
        built.data_versions.record(node, version)
    record(built, result)


def record(built: Built, result: StatsResult) -> None:
    """The result as an MLflow artifact and tags (and so with the registered model's run)."""
    norm = result.normalization()
    built.tracker.log_text(json.dumps(result.to_json(), indent=1), ARTIFACT)
    built.tracker.set_tags(
        {
            "stats.clients": str(result.clients),
            "stats.examples": str(result.examples),
            "stats.mean": json.dumps([round(m, 6) for m in norm.mean]),
            "stats.std": json.dumps([round(s, 6) for s in norm.std]),
            "stats.noise_multiplier": str(result.noise_multiplier),
            "stats.declined": str(len(result.declined)),
            "stats.rejected": str(len(result.rejected)),
        }
    )


def _ledger_spend(built: Built) -> Callable[[dict[str, GaussianSteps]], None] | None:
    privacy = built.strategy.privacy
    if not isinstance(privacy, SampleLevelDP):
        return None

    def spend(entries: dict[str, GaussianSteps]) -> None:
        privacy.ledger.record_round(0, mechanism="federated_stats_gaussian", sample_level=entries)

    return spend


def _logged_result(built: Built) -> dict[str, list[float]] | None:
    """The statistics artifact of the tracked run, None if it has none."""
    text = built.tracker.read_text(ARTIFACT)
    if text is None:
        return None
    data = json.loads(text)
    return {"mean": list(data["mean"]), "std": list(data["std"])}
