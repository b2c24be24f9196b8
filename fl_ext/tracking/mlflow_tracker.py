"""MLflow tracking through an explicit client (no global active-run state in the ServerApp)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fl_ext.tracking.base import DatasetRecord, Tracker
from fl_ext.tracking.metric_names import metric_key, mlflow_metrics
from fl_ext.tracking.paths import default_artifact_root, resolve_tracking_uri

log = logging.getLogger(__name__)

_PARAM_BATCH = 100  # MLflow's log_batch limits
_METRIC_BATCH = 1000
_PARAM_VALUE_MAX = 6000
# MLflow 3 experiment kind: the UI's model-training view, not the GenAI (traces) one
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class MlflowTracker(Tracker):
    """One MLflow run per experiment run, in ``experiment`` at ``uri`` (see paths.py)."""

    def __init__(
        self,
        *,
        uri: str | None = None,
        experiment: str = "fl-ext",
        register_model: bool = True,
        registered_model_name: str | None = None,
    ) -> None:
        if not experiment:
            raise ValueError("tracking.experiment must be a non-empty name")
        self.uri = resolve_tracking_uri(uri)
        self.experiment = experiment
        self.register_model = bool(register_model)
        self.registered_model_name = registered_model_name
        self.run_id = None
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The MlflowClient, created on first use (import of mlflow is slow)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            if self.uri.startswith("sqlite:///"):
                Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def experiment_id(self) -> str:
        """Id of the experiment, created with an absolute artifact location if new.

        The experiment is marked a model-training one (``mlflow.experimentKind``); one made
        elsewhere gets the tag when it has none (a kind chosen in the UI is left alone).
        """
        found = self.client.get_experiment_by_name(self.experiment)
        if found is None:
            return str(
                self.client.create_experiment(
                    self.experiment,
                    artifact_location=default_artifact_root(self.uri),
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            )
        if EXPERIMENT_KIND_TAG not in found.tags:
            self.client.set_experiment_tag(
                found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return str(found.experiment_id)

    def start(self, *, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        run = self.client.create_run(self.experiment_id(), run_name=run_name, tags=dict(tags))
        self.run_id = run.info.run_id
        items = [Param(k, str(v)[:_PARAM_VALUE_MAX]) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _PARAM_BATCH])
        log.info("MLflow run %s in experiment '%s' at %s", self.run_id, self.experiment, self.uri)

    def resume(self, run_id: str) -> int:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException as err:
            raise ValueError(
                f"MLflow run {run_id} of the checkpoint is not in {self.uri}: resume with the "
                "tracking settings of the interrupted run"
            ) from err
        self.run_id = run_id
        self.client.update_run(run_id, status="RUNNING")
        history = self.client.get_metric_history(run_id, metric_key("round_time_s"))
        steps = [m.step for m in history]
        log.info("MLflow run %s resumed (last logged round: %s)", run_id, max(steps, default=0))
        return max(steps, default=-1)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """One batch, under the MLflow names of metric_names.py (``accuracy/test``, ...)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in mlflow_metrics(metrics).items()]
        for i in range(0, len(items), _METRIC_BATCH):
            self.client.log_batch(self._require_run(), metrics=items[i : i + _METRIC_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(
            self._require_run(), tags=[RunTag(k, str(v)) for k, v in tags.items()]
        )

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self._require_run(), text, artifact_file)

    def log_datasets(self, datasets: Sequence[DatasetRecord]) -> None:
        """MLflow dataset inputs (digest truncated to MLflow's 36 characters; full in profile)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(
                    name=d.name,
                    digest=d.digest[:32],
                    source_type="fl-ext",
                    source=d.source,
                    profile=json.dumps({"digest": d.digest, **d.profile}),
                ),
                tags=[InputTag("mlflow.data.context", d.context)],
            )
            for d in datasets
        ]
        for i in range(0, len(inputs), _METRIC_BATCH):
            self.client.log_inputs(self._require_run(), datasets=inputs[i : i + _METRIC_BATCH])

    def read_text(self, artifact_file: str) -> str | None:
        from mlflow.exceptions import MlflowException

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar in logs
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(self._require_run(), artifact_file, tmp)
            except (MlflowException, OSError):
                return None
            return Path(path).read_text()

    def log_png(self, png_bytes: bytes, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(png_bytes)
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(
                self._require_run(), str(path), None if parent == "." else parent
            )

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
        """Save with the pytorch flavour, upload as the run's ``artifact_path``, register.

        Done through the client only: MLflow's fluent ``log_model`` would set the global
        tracking URI and the ``MLFLOW_TRACKING_URI`` variable of this process as a side effect,
        and the next run in the same process would then be recorded in the wrong place.
        """
        import mlflow.pytorch
        from mlflow.exceptions import MlflowException

        run_id = self._require_run()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model"
            mlflow.pytorch.save_model(
                model,
                str(path),
                input_example=input_example,
                pip_requirements=_pip_requirements(),
            )
            self.client.log_artifacts(run_id, str(path), artifact_path)
        name = (registered_name or self.registered_model_name) if self.register_model else None
        if not name:
            return None
        try:
            self.client.create_registered_model(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        version = self.client.create_model_version(
            name, source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}
        )
        for alias in aliases:
            self.client.set_registered_model_alias(name, alias, version.version)
        log.info("Registered model '%s' version %s %s", name, version.version, list(aliases))
        return str(version.version)

    def alias_tags(self, registered_name: str, alias: str) -> dict[str, str] | None:
        from mlflow.exceptions import MlflowException

        if not self.register_model:
            return None
        try:
            version = self.client.get_model_version_by_alias(registered_name, alias)
        except MlflowException as err:
            if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model, or no such alias
            raise
        return {**{k: str(v) for k, v in version.tags.items()}, "version": str(version.version)}

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            log.info("MLflow run %s ended %s", self.run_id, status)

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MlflowTracker.start() has not been called")
        return self.run_id


def _pip_requirements() -> list[str]:
    """Pinned requirements for the logged model, without MLflow's slow inference."""
    from importlib.metadata import version

    return [f"torch=={version('torch').split('+')[0]}", f"numpy=={version('numpy')}"]
