"""Find the MLflow run a finished ``flwr run`` recorded, and read one of its JSON artifacts."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fl_ext.tracking import resolve_tracking_uri
from simulations.config import ConfigError, compose_experiment


def tracking_uri(overrides: list[str]) -> str:
    """The tracking URI the run used (``tracking.uri``, else ``MLFLOW_TRACKING_URI``/home)."""
    cfg = compose_experiment(overrides).cfg
    return resolve_tracking_uri(cfg.tracking.get("uri"))


def registered_version(client: Any, ref: str, *, setting: str) -> Any:
    """The MLflow ModelVersion ``NAME@ALIAS`` or ``NAME/VERSION`` names in ``client``'s registry.

    ConfigError, naming ``setting`` (where the reference came from), for a malformed reference
    or one the registry does not hold.
    """
    from mlflow.exceptions import MlflowException

    name, sep, rest = ref.partition("@") if "@" in ref else ref.rpartition("/")
    if not (name and sep and rest):
        raise ConfigError(f"{setting}={ref!r}: NAME@ALIAS or NAME/VERSION of a registered model")
    try:
        if sep == "@":
            return client.get_model_version_by_alias(name, rest)
        return client.get_model_version(name, rest)
    except MlflowException as err:
        raise ConfigError(
            f"{setting}={ref}: not in the registry at {client.tracking_uri} ({err})"
        ) from err


def run_artifact(uri: str, experiment: str, flwr_run_id: int, artifact: str) -> dict[str, Any]:
    """The JSON ``artifact`` of the MLflow run tagged with ``flwr_run_id`` in ``experiment``."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per fact
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment '{experiment}' at {uri}")
    found = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`flwr.run_id` = '{flwr_run_id}'"
    )
    if not found:
        raise LookupError(f"no MLflow run of flwr run {flwr_run_id} in '{experiment}' at {uri}")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(found[0].info.run_id, artifact, tmp)
        data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def refuse_keys(parser: argparse.ArgumentParser, overrides: list[str], *keys: str) -> None:
    """Exit 2 naming an override of ``keys``: the command sets them (a later one would win)."""
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in keys:
            parser.error(f"{override!r}: {key} is set by this command (see --help)")


def launch_task(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    *,
    experiment_key: str,
    artifact: str,
    write: Callable[[str], None],
) -> tuple[int, dict[str, Any] | None]:
    """Run ``args`` (a ``task=...`` run); ``(exit code, its JSON artifact when it completed)``.

    ``experiment_key``: where the run was recorded (``tracking.experiment`` for statistics,
    ``monitor.experiment`` for the monitor).
    """
    from simulations.run import EXIT_FAILED, EXIT_OK, launch

    code, run_id = launch(parser, args, write=write)
    if code != EXIT_OK or run_id is None:
        return code, None
    experiment = str(OmegaConf.select(compose_experiment(args.overrides).cfg, experiment_key))
    try:
        return code, run_artifact(tracking_uri(args.overrides), experiment, run_id, artifact)
    except (LookupError, OSError) as err:
        write(f"The run completed but its {artifact} could not be read: {err}")
        return EXIT_FAILED, None


def write_json(path: Path | None, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` (parents made); nothing when ``path`` is None."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
