"""Automatic rollback: a poisoned round is undone and the run goes on (in-process grid)."""

import numpy as np
import pytest
import torch

from simulations.build import build
from simulations.client_app import app as client_app
from simulations.config import compose_experiment
from simulations.inprocess import InProcessGrid
from simulations.run_loop import run
from strategies.rollback import Rollback
from strategies.stage import Stage

BASE = ["dataset=digits", "model=mlp", "num_rounds=4", "fraction_evaluate=0", "tracking=none"]


class PoisonRound(Stage):
    """Test only: replaces every update of one round by large noise (a poisoned aggregate)."""

    name = "poison_round"

    def __init__(self, at: int, value: float | None = None) -> None:
        self.at, self.value = at, value

    def transform(self, rnd, updates, accepted):
        if rnd.number != self.at:
            return updates, accepted
        if self.value is not None:  # weights so large the model's loss is not finite
            return torch.full_like(updates, self.value), accepted
        g = torch.Generator().manual_seed(0)
        return 30 * torch.randn(updates.shape, generator=g), accepted


def run_poisoned(overrides, poison):
    built = build(compose_experiment([*BASE, *overrides]))
    built.strategy.stages.insert(0, poison)  # transforms run in stage order
    result = run(InProcessGrid(client_app, 4), built)
    return built, result


def test_a_poisoned_round_is_rolled_back_and_the_run_goes_on():
    built, result = run_poisoned(["rollback.max_drop=0.2"], PoisonRound(at=3))
    stage = next(s for s in built.strategy.stages if isinstance(s, Rollback))
    assert stage.rolled_back == [3]
    history = built.history
    assert history[3] == pytest.approx(history[2])  # round 3 kept round 2's model
    assert history[4] >= history[2] - 0.02 and history[4] > 0.8  # and training went on
    assert result.evaluate_metrics_serverapp[3]["accuracy"] == pytest.approx(history[2])


def test_without_rollback_the_poison_stays():
    built, _ = run_poisoned([], PoisonRound(at=3))
    assert built.history[3] < built.history[2] - 0.2


def test_a_non_finite_model_is_rolled_back():
    built, _ = run_poisoned(["rollback.max_drop=0.5"], PoisonRound(at=2, value=1e30))
    stage = next(s for s in built.strategy.stages if isinstance(s, Rollback))
    assert 2 in stage.rolled_back and np.isfinite(built.history[4])


def test_rollback_state_survives_a_restart_and_bad_settings_are_refused():
    stage = Rollback(max_drop=0.1)
    stage.last_kept, stage.rolled_back = 0.9, [4]
    again = Rollback(max_drop=0.1)
    again.load_state_dict(stage.state_dict())
    assert again.last_kept == 0.9 and again.rolled_back == [4]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError, match="max_drop"):
            Rollback(max_drop=bad)
