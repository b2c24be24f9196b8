"""The names metrics get in MLflow: ``<section>/<name>``, so MLflow groups the charts.

The strategy and its parts report flat names (``test_accuracy``, ``bytes_up_cum``); the tracker
maps them once, here, when it logs. MLflow 3 groups run charts into sections by the prefix
before ``/``, and sections sort by name, so the important ones come first:

``accuracy/`` (test, fed_eval, fed_eval_received), ``bytes/`` (down, up and their ``_cum``),
``clients/`` (selected, replied, failed, rejected and ``rejected_<reason>``, valid, eval_*,
clock decisions, tiers), ``dp/`` (epsilon, delta, clip, ...), ``loss/`` (test, fed_eval, train),
``time/`` (round_s, train_s, wall_s, to_target_s, sim_*, reply times); anything else goes to
``other/``. A name that already has a ``/`` is kept as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger(__name__)

_EXACT = {
    "test_accuracy": "accuracy/test",
    "fed_eval_accuracy": "accuracy/fed_eval",
    "fed_eval_received_accuracy": "accuracy/fed_eval_received",
    "test_loss": "loss/test",
    "fed_eval_loss": "loss/fed_eval",
    "fed_eval_received_loss": "loss/fed_eval_received",
    "train_loss": "loss/train",
    "round_skipped": "clients/round_skipped",
    "byzantine_in_round": "clients/byzantine",
    "late_replies_drained": "clients/late_drained",
    "round_time_s": "time/round_s",
    "train_time_s": "time/train_s",
    "wall_time_s": "time/wall_s",
    "time_to_target_s": "time/to_target_s",
    "sim_time_s": "time/sim_s",
    "sim_time_to_target_s": "time/sim_to_target_s",
    "sim_round_s": "time/sim_round_s",
    "round_close_s": "time/round_close_s",
    "straggler_index": "time/straggler_index",
}
# (flat prefix, MLflow prefix), first match wins
_PREFIXES = (
    ("test_accuracy_w", "accuracy/test_w"),  # every width of a sub-model run
    ("test_loss_w", "loss/test_w"),
    ("coverage_", "clients/coverage_"),
    ("telemetry_", "telemetry/"),
    ("coordinates_", "clients/coordinates_"),
    ("eval_clients_", "clients/eval_"),
    ("clients_", "clients/"),
    ("rejected_", "clients/rejected_"),
    ("bytes_", "bytes/"),
    ("dp_", "dp/"),
    ("data_", "data/"),
    ("monitor_", "monitor/"),
    ("train_reply_", "time/train_reply_"),
    ("sim_upload_", "time/sim_upload_"),
)


def metric_key(name: str) -> str:
    """The MLflow name of the flat metric ``name`` (``test_accuracy`` -> ``accuracy/test``)."""
    if "/" in name:
        return name
    if name in _EXACT:
        return _EXACT[name]
    for flat, section in _PREFIXES:
        if name.startswith(flat):
            return section + name.removeprefix(flat)
    for suffix, section in (("_accuracy", "accuracy/"), ("_loss", "loss/")):
        if name.endswith(suffix):
            return section + name.removesuffix(suffix)
    if name.endswith("_s"):
        return f"time/{name}"
    return f"other/{name}"


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` under their MLflow names.

    Should two names map to one (a caller logging ``accuracy/test`` beside ``test_accuracy``),
    the later one is kept as ``other/<name>`` with a warning: nothing logged is lost.
    """
    out: dict[str, float] = {}
    for name, value in metrics.items():
        key = metric_key(name)
        if key in out:
            log.warning("metric %r would overwrite %r in MLflow; kept as other/%s", name, key, name)
            key = f"other/{name}"
        out[key] = value
    return out
