"""Experiment tracking: MLflow (embedded sqlite by default) or nothing."""

from fl_ext.tracking.base import NullTracker, Tracker
from fl_ext.tracking.metric_names import metric_key, mlflow_metrics
from fl_ext.tracking.mlflow_tracker import MlflowTracker
from fl_ext.tracking.paths import default_artifact_root, fl_ext_home, resolve_tracking_uri

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "Tracker",
    "default_artifact_root",
    "fl_ext_home",
    "metric_key",
    "mlflow_metrics",
    "resolve_tracking_uri",
]
