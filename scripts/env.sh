# Source this file (`source scripts/env.sh`) before `flwr run .` in a new shell.
_fl_ext_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
export PATH="$_fl_ext_root/.venv/bin:$PATH"          # flwr starts `flower-superlink` by name
# Never let the SuperLink `uv sync` the app's dependencies: it would resolve torch from the
# index (a multi-GB CUDA build) instead of using this environment.
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export MLFLOW_DISABLE_TELEMETRY=true RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0
unset _fl_ext_root
