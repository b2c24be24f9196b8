"""The ServerApp ``flwr run`` starts: compose the config, build, run, track."""

from __future__ import annotations

from logging import ERROR, INFO

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from simulations.build import build
from simulations.config import ConfigError, compose_experiment, parse_overrides
from simulations.console import configure_console
from simulations.tasks import run_task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point: ``overrides`` in the run config are Hydra overrides for conf/."""
    configure_console()
    overrides = parse_overrides(str(context.run_config.get("overrides", "")))
    log(INFO, "fl-ext overrides: %s", overrides or "(none)")
    try:
        built = build(compose_experiment(overrides))
    except ConfigError as err:
        log(ERROR, "Configuration error: %s", err)
        raise
    run_task(grid, built, flwr_run_id=context.run_id)
