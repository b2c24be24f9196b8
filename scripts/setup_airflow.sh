#!/usr/bin/env bash
# Create .venv-airflow (Python 3.11, like .venv) with Apache Airflow 3.3 for pipelines/.
# Airflow lives apart from .venv: its pins clash with flwr's (fastapi, typer) and dp-accounting's
# (attrs). The DAG's tasks run the project's commands with .venv/bin/python, so only Airflow is
# installed here. Idempotent: a second run only checks the install.
# Usage: scripts/setup_airflow.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
AIRFLOW_SPEC=${AIRFLOW_SPEC:-apache-airflow>=3.3,<3.4}

if [ ! -x .venv-airflow/bin/python ]; then
  "$PYTHON" -m venv .venv-airflow
fi
if ! .venv-airflow/bin/python - "$AIRFLOW_SPEC" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
from packaging.requirements import Requirement
sys.exit(0 if Requirement(sys.argv[1]).specifier.contains(version("apache-airflow")) else 1)
PY
then
  # -q still prints a warning per package for each index folder this machine lacks: drop those
  .venv-airflow/bin/python -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location '" || true; }
  .venv-airflow/bin/python -m pip install -q "$AIRFLOW_SPEC" 2>&1 | { grep -v "^WARNING: Location '" || true; }
fi
echo "Airflow $(.venv-airflow/bin/python -c 'from importlib.metadata import version; print(version("apache-airflow"))') installed in $(pwd)/.venv-airflow"
