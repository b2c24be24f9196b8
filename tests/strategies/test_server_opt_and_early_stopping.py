"""The aggregation slot's server optimizer and the loop's early stop, on the in-process grid."""

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord

from fl_ext.early_stopping import EarlyStopping
from fl_ext.server_opt import FedAdam, FedAvgM
from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg

from .test_fedavg import GLOBAL, expected_mean, make_app, small_ids


def _round(strategy, grid, arrays, server_round=1):
    messages = strategy.configure_train(server_round, arrays, ConfigRecord(), grid)
    new, _ = strategy.aggregate_train(server_round, grid.send_and_receive(messages))
    return new


def test_server_learning_rate_scales_the_aggregate_of_any_rule():
    grid = InProcessGrid(make_app({}), 4, node_ids=small_ids(4))
    strategy = FlExtFedAvg(server_opt=FedAvgM(lr=0.5, momentum=0.0), max_update_norm=100.0)
    got = record_to_named(_round(strategy, grid, named_array_record(GLOBAL)))
    for k, v in expected_mean([1, 2, 3, 4]).items():
        np.testing.assert_allclose(got[k], GLOBAL[k] + 0.5 * (v - GLOBAL[k]), rtol=1e-6)


def test_server_optimizer_state_is_checkpointed_and_restored():
    grid = InProcessGrid(make_app({}), 4, node_ids=small_ids(4))
    a = FlExtFedAvg(server_opt=FedAdam(), max_update_norm=100.0)
    arrays = _round(a, grid, named_array_record(GLOBAL), 1)
    state, tensors = a.state_dict()
    assert {"server_opt.m", "server_opt.v", "server_opt.count"} <= set(tensors)
    b = FlExtFedAvg(server_opt=FedAdam(), max_update_norm=100.0)
    b.load_state_dict(state, tensors, first_round=2)
    after_a = record_to_named(_round(a, grid, arrays, 2))
    after_b = record_to_named(_round(b, grid, arrays, 2))
    for k in GLOBAL:
        np.testing.assert_array_equal(after_a[k], after_b[k])
    assert torch.equal(a.server_step.state["v"], b.server_step.state["v"])


def test_early_stopping_ends_the_run_and_says_why():
    grid = InProcessGrid(make_app({}), 3, node_ids=small_ids(3))
    strategy = FlExtFedAvg(
        fraction_evaluate=0.0,
        max_update_norm=100.0,
        early_stopping=EarlyStopping(patience=2, metric="test_loss"),
    )
    losses = iter([2.0, 1.0, 1.5, 1.2, 0.1, 0.1])  # round 0, 1, 2, 3, ...: stops after round 3
    seen = {}
    strategy.start(
        grid,
        named_array_record(GLOBAL),
        num_rounds=6,
        evaluate_fn=lambda rnd, arrays: MetricRecord({"loss": next(losses), "accuracy": 0.5}),
        on_round_end=seen.__setitem__,
    )
    assert sorted(seen) == [0, 1, 2, 3]
    assert strategy.stop_reason.startswith("early stopping: test_loss did not improve")
    assert "best 1.0000 in round 1" in strategy.stop_reason
