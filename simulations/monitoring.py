"""Monitor a registered model on the federation's current data; suggest re-training on decay.

``task=monitor monitor.model=NAME@ALIAS`` (``python -m simulations.monitor``): the ServerApp
loads that registered version, sends it to every client for a federated evaluation on their
local data, and runs the federated-statistics query on their raw data. It compares

* the accuracy with the one recorded at registration (``fed_eval_accuracy`` tag if the run
  had federated evaluation, else ``test_accuracy``): a drop above ``monitor.max_drop``;
* the per-channel statistics with those the model was trained with (``stats_mean`` /
  ``stats_std`` tags, ``preprocessing=federated_stats``): a mean moved by more than
  ``monitor.max_stats_drift`` registered stds, or a std changed by more than that factor in
  ``|log ratio|``.

On degradation it alerts: a WARNING log line, tags on the registered version
(``retrain_suggested=true``, ``retrain_reason``) and on the monitor's MLflow run, and an
optional webhook POST. The report is the monitor run's ``monitor.json`` artifact.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from flwr.serverapp import Grid

from fl_ext.data.normalize import Normalization
from fl_ext.params import get_weights, set_weights
from fl_ext.tracking import MlflowTracker
from flwr_records import named_array_record
from simulations.build import Built
from simulations.config import ConfigError
from simulations.serving import request
from simulations.task_runs import registered_version
from strategies.evaluation import weighted_means
from strategies.exchange import exchange
from strategies.federated_stats import FederatedStatistics, StatsResult
from strategies.round_log import RoundLog

log = logging.getLogger("fl_ext")
REPORT = "monitor.json"


@dataclass
class MonitorReport:
    """What one monitoring run found."""

    model: str
    version: str
    accuracy: float
    reference_accuracy: float
    reference: str  # which registration figure it is compared with
    clients: int
    client_accuracy: dict[str, float]  # p10, p50, p90, worst
    mean_shift_sd: float | None = None
    std_log_ratio: float | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def degraded(self) -> bool:
        """Whether any rule fired."""
        return bool(self.reasons)

    def to_json(self) -> dict[str, Any]:
        """The report with its verdict."""
        return {**asdict(self), "degraded": self.degraded}


@dataclass(frozen=True)
class Registered:
    """A registered model version: its tags, weights and normalisation."""

    name: str
    version: str
    tags: dict[str, str]
    weights: dict[str, np.ndarray]
    normalization: Normalization | None


def load_registered(uri: str, ref: str) -> Registered:
    """``NAME@ALIAS`` or ``NAME/VERSION`` from the registry at ``uri``; ConfigError if absent."""
    import mlflow.pytorch
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    mv = registered_version(client, ref, setting="monitor.model")
    name = mv.name
    model = mlflow.pytorch.load_model(client.get_model_version_download_uri(name, mv.version))
    norm = None
    net = model
    # trained with preprocessing=federated_stats (fl_ext.models.normalized.Normalized): MLflow 3
    # saves it through torch.export, so it loads as a GraphModule that keeps the submodule `net`
    # and the buffers `mean`/`std` by name, not as the class
    if all(hasattr(model, key) for key in ("net", "mean", "std")):
        norm = Normalization.of(model.mean.flatten().tolist(), model.std.flatten().tolist())
        net = model.net
    weights = {k: v.copy() for k, v in get_weights(net).items()}
    return Registered(name, str(mv.version), dict(mv.tags), weights, norm)


def monitor(grid: Grid, built: Built, nodes: list[int], *, tracker: MlflowTracker) -> MonitorReport:
    """Evaluate, compare, alert (see the module docstring); the report is also logged."""
    cfg = built.experiment.cfg.monitor
    registered = load_registered(tracker.uri, str(cfg.model))
    try:
        set_weights(built.model, registered.weights)
    except (KeyError, ValueError, RuntimeError) as err:
        raise ConfigError(
            f"monitor.model={cfg.model} does not fit the configured model "
            f"(model={built.experiment.choices['model']}, dataset="
            f"{built.experiment.choices['dataset']}): {err}"
        ) from err
    stats = _current_statistics(grid, built, nodes)
    if registered.normalization is not None:
        built.normalize_with(registered.normalization)
    accuracy, per_client, clients = _federated_accuracy(grid, built, nodes)
    ref_key = "fed_eval_accuracy" if "fed_eval_accuracy" in registered.tags else "test_accuracy"
    reference = float(registered.tags.get(ref_key, "nan"))
    report = MonitorReport(
        model=registered.name,
        version=registered.version,
        accuracy=accuracy,
        reference_accuracy=reference,
        reference=ref_key,
        clients=clients,
        client_accuracy=per_client,
        stats=stats.to_json() if stats is not None else {},
    )
    drop = reference - accuracy
    if math.isfinite(drop) and drop > float(cfg.max_drop):
        report.reasons.append(
            f"accuracy {accuracy:.4f} is {drop:.4f} below the {reference:.4f} recorded at "
            f"registration ({ref_key}; monitor.max_drop={cfg.max_drop})"
        )
    _compare_statistics(report, registered.tags, stats, float(cfg.max_stats_drift))
    _record(report, built, tracker, registered)
    return report


def _current_statistics(grid: Grid, built: Built, nodes: list[int]) -> StatsResult | None:
    """The clients' raw-data statistics now (the phase's settings, or the defaults)."""
    phase = built.statistics or FederatedStatistics(min_count=1)
    try:
        return phase.run(grid, nodes, built.evaluate_config, input_shape=built.split.input_shape)
    except RuntimeError as err:
        log.warning("Monitor: no federated statistics (%s)", err)
        return None


def _federated_accuracy(
    grid: Grid, built: Built, nodes: list[int]
) -> tuple[float, dict[str, float], int]:
    """Example-weighted accuracy of the loaded model on every client's local test data."""
    strategy = built.strategy
    record = named_array_record(get_weights(built.model))
    messages = strategy._construct_messages(
        strategy._record(record, built.evaluate_config, {}), nodes, "evaluate"
    )
    got = exchange(grid, messages, timeout=float(built.experiment.cfg.round_timeout))
    accepted = strategy.checks.evaluate(None, RoundLog(0), got.replies)
    if not accepted:
        raise RuntimeError(f"monitor: none of {len(nodes)} clients returned a usable evaluation")
    accs = [float(r.metrics["accuracy"]) for r in accepted]
    mean = weighted_means(
        [r.num_examples for r in accepted], {"accuracy": accs}, strategy.weight_cap_factor
    )["accuracy"]
    spread = {
        "p10": float(np.percentile(accs, 10)),
        "p50": float(np.percentile(accs, 50)),
        "p90": float(np.percentile(accs, 90)),
        "worst": float(min(accs)),
    }
    return mean, spread, len(accepted)


def _compare_statistics(
    report: MonitorReport, tags: dict[str, str], stats: StatsResult | None, limit: float
) -> None:
    if stats is None or "stats_mean" not in tags:
        return
    ref_mean = np.asarray(json.loads(tags["stats_mean"]), dtype=np.float64)
    ref_std = np.asarray(json.loads(tags["stats_std"]), dtype=np.float64)
    now = stats.normalization()
    mean, std = np.asarray(now.mean), np.asarray(now.std)
    if mean.shape != ref_mean.shape:
        report.reasons.append(f"data has {mean.size} channels, the model {ref_mean.size}")
        return
    report.mean_shift_sd = float(np.max(np.abs(mean - ref_mean) / ref_std))
    report.std_log_ratio = float(np.max(np.abs(np.log(std / ref_std))))
    if report.mean_shift_sd > limit or report.std_log_ratio > limit:
        report.reasons.append(
            f"data drifted: channel means moved {report.mean_shift_sd:.3f} registered stds, "
            f"stds by |log ratio| {report.std_log_ratio:.3f} (monitor.max_stats_drift={limit})"
        )


def _record(
    report: MonitorReport, built: Built, tracker: MlflowTracker, registered: Registered
) -> None:
    """Log, tag the run and the registered version, call the webhook."""
    verdict = "degraded" if report.degraded else "healthy"
    summary = (
        f"{registered.name} v{registered.version}: federated accuracy {report.accuracy:.4f} "
        f"on {report.clients} clients (registered {report.reference_accuracy:.4f})"
    )
    tracker.log_metrics(
        0,
        {
            "monitor_accuracy": report.accuracy,
            "monitor_reference_accuracy": report.reference_accuracy,
            "monitor_worst_client_accuracy": report.client_accuracy["worst"],
            **(
                {"monitor_mean_shift_sd": report.mean_shift_sd}
                if report.mean_shift_sd is not None
                else {}
            ),
        },
    )
    tracker.log_text(json.dumps(report.to_json(), indent=1), REPORT)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    tags = {"monitor.verdict": verdict, "monitor.model": f"{registered.name}/{registered.version}"}
    version_tags = {"monitor.last": f"{stamp} {verdict}: accuracy {report.accuracy:.4f}"}
    if report.degraded:
        reason = "; ".join(report.reasons)
        log.warning("ALERT monitor: %s; %s; re-training suggested", summary, reason)
        tags["monitor.reason"] = reason[:5000]
        version_tags |= {"retrain_suggested": "true", "retrain_reason": reason[:5000]}
    else:
        log.info("Monitor: %s; healthy", summary)
    tracker.set_tags(tags)
    client = tracker.client
    for key, value in version_tags.items():
        client.set_model_version_tag(registered.name, registered.version, key, value)
    hook = built.experiment.cfg.monitor.get("webhook")
    if hook and report.degraded:
        _post(str(hook), {"alert": "retrain_suggested", "summary": summary, **report.to_json()})


def _post(url: str, payload: dict[str, Any]) -> None:
    """POST the alert; a webhook that fails is logged, never fatal (the tags are set)."""
    try:
        status, _ = request(url, json.dumps(payload).encode(), timeout=10)
    except OSError as err:
        log.warning("Monitor alert webhook %s failed: %s", url, err)
        return
    if status >= 400:
        log.warning("Monitor alert webhook %s failed: HTTP %s", url, status)
    else:
        log.info("Monitor alert sent to %s (HTTP %s)", url, status)
