"""The ServerApp ``flwr run`` starts: compose the config, build, run, track."""

from __future__ import annotations

import logging
from logging import ERROR, INFO

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from simulations.config import ConfigError, compose_experiment, parse_overrides
from simulations.experiment import build, run

app = ServerApp()


def route_fl_ext_logs() -> None:
    """Send ``fl_ext.*`` log records to Flower's handlers, so they stream with ``flwr run``."""
    ours, flower = logging.getLogger("fl_ext"), logging.getLogger("flwr")
    ours.setLevel(logging.INFO)
    for handler in flower.handlers:
        if handler not in ours.handlers:
            ours.addHandler(handler)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point: ``overrides`` in the run config are Hydra overrides for conf/."""
    route_fl_ext_logs()
    overrides = parse_overrides(str(context.run_config.get("overrides", "")))
    log(INFO, "fl-ext overrides: %s", overrides or "(none)")
    try:
        built = build(compose_experiment(overrides))
    except ConfigError as err:
        log(ERROR, "Configuration error: %s", err)
        raise
    run(grid, built, flwr_run_id=context.run_id)
