"""FedBuff in a whole experiment (config -> build -> versions) on the in-process grid."""

import pytest

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import ConfigError, compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run

BASE = [
    "model=mlp", "num_rounds=6", "fraction_evaluate=0", "tracking=none", "local_epochs=1",
    "driver=fedbuff", "driver.concurrency=6", "driver.buffer_size=3",
]  # fmt: skip


def history(overrides):
    built = build(compose_experiment(BASE + overrides))
    run(InProcessGrid(client_app, 10), built, flwr_run_id=1)
    return built.history


def test_on_the_simulated_clock_a_run_is_deterministic_and_learns():
    first, second = history(["network=mixed"]), history(["network=mixed"])
    assert first == second
    assert first[6] > first[0] + 0.4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["secagg=secagg_plus", "aggregator=mean"], "secure aggregation needs rounds"),
        (["privacy=client_level"], "Poisson-amplified client-level DP needs rounds"),
        (["network=measured"], "measures reply times itself"),
        (["driver.buffer_size=8"], "could never fill"),
    ],
)
def test_what_needs_rounds_is_refused_at_start(overrides, message):
    with pytest.raises(ConfigError, match=message):
        build(compose_experiment(BASE + overrides))
