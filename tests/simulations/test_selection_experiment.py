"""Selectors in a federation (in-process grid, real ClientApp)."""

import pytest
from flwr.app import Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from simulations.build import build
from simulations.client_app import app as real_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = ["dataset=digits", "model=mlp", "num_rounds=4", "fraction_evaluate=0.0", "tracking=none"]


@pytest.mark.parametrize("selection", ["oort", "power_of_choice", "weighted"])
def test_guided_selectors_train_and_keep_history(selection):
    built = build(compose_experiment([*BASE, f"selection={selection}", "fraction_train=0.5"]))
    run(InProcessGrid(real_app, 8), built)
    reg = built.strategy.registry
    assert sum(r.selected for r in reg.records.values()) == 4 * 4
    assert all(r.utility is not None for r in reg.records.values() if r.succeeded)
    assert built.history[4] > built.history[0] + 0.4


def _lying_app():
    """Real replies, but every node reports a negative compute time."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = real_app(msg, context)
        metrics = dict(reply.content["metrics"])
        reply.content["metrics"] = MetricRecord({**metrics, "compute_time_s": -1.0})
        return reply

    return app


def test_negative_reported_times_are_rejected():
    built = build(compose_experiment([*BASE, "selection=oort", "num_rounds=1"]))
    run(InProcessGrid(_lying_app(), 4), built)
    assert built.strategy.round_log.rejected["bad_metric"] == 4
    assert all(r.failed == 1 for r in built.strategy.registry.records.values())


def test_bad_selector_settings_fail_at_build():
    with pytest.raises(ConfigError, match="explore"):
        build(compose_experiment([*BASE, "selection=oort", "selection.explore=2"]))
