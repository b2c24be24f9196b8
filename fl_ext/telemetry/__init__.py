"""FL telemetry and poisoning detection: update statistics, free-riders, suspicion, policy."""

from fl_ext.telemetry.detector import SuspicionDetector, robust_z, round_features
from fl_ext.telemetry.free_riders import FreeRiderDetector
from fl_ext.telemetry.policy import Decision, QuarantinePolicy, audit_line
from fl_ext.telemetry.update_stats import NodeStats, node_stats, round_summary

__all__ = [
    "Decision",
    "FreeRiderDetector",
    "NodeStats",
    "QuarantinePolicy",
    "SuspicionDetector",
    "audit_line",
    "node_stats",
    "robust_z",
    "round_features",
    "round_summary",
]
