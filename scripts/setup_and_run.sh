#!/usr/bin/env bash
# Create .venv, install fl-ext (CPU torch first), run the default experiment:
# 10 simulated SuperNodes, MNIST-5k, small CNN, FedAvg, tracked in MLflow.
# Usage: scripts/setup_and_run.sh [--no-run] [extra `flwr run` arguments...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # a CPU build; pip never upgrades it afterwards

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "fl-ext installed in $(pwd)/.venv"

if [ "${1:-}" = "--no-run" ]; then
  exit 0
fi

# shellcheck source=scripts/env.sh
source scripts/env.sh
# Flower's local federation has 2 SuperNodes by default; ours has 10 (kept by the SuperLink).
flwr federation simulation-config @none/default --num-supernodes 10
flwr run . --stream "$@"
flwr ls --limit 1
