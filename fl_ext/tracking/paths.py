"""Where runs are recorded: an absolute location independent of the working directory.

Flower starts the ServerApp from an installed copy of the app in its own directory, so a
relative ``sqlite:///mlflow.db`` or ``./mlruns`` would scatter runs. The default lives under
``$FL_EXT_HOME`` (default ``~/.fl-ext``): ``mlflow.db`` and ``mlartifacts/``.
"""

from __future__ import annotations

import os
from pathlib import Path


def fl_ext_home() -> Path:
    """``$FL_EXT_HOME`` or ``~/.fl-ext``, absolute, created if missing."""
    home = Path(os.environ.get("FL_EXT_HOME", "~/.fl-ext")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def resolve_tracking_uri(configured: str | None = None) -> str:
    """Config key first, then ``MLFLOW_TRACKING_URI``, then the sqlite file under the home."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{fl_ext_home() / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifact folder beside a sqlite file (absolute); None lets a server decide."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = Path(tracking_uri.removeprefix("sqlite:///"))
        return (db_path.parent / "mlartifacts").resolve().as_uri()
    return None
