"""Stragglers on measured reply times: the in-process grid holds slow nodes' replies back."""

import time

import numpy as np
import pytest
from flwr.app import ConfigRecord

from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.exchange import exchange
from strategies.stragglers import MeasuredStragglers

from .test_fedavg import GLOBAL, expected_mean, make_app, small_ids


def _start(grid, policy, rounds, fraction=4 / 6, timeout=10.0):
    strategy = FlExtFedAvg(
        fraction_train=fraction,
        fraction_evaluate=0.0,
        max_update_norm=100.0,
        stragglers=policy,
    )
    seen = {}
    started = time.monotonic()
    result = strategy.start(
        grid,
        named_array_record(GLOBAL),
        num_rounds=rounds,
        timeout=timeout,
        train_config=ConfigRecord(),
        on_round_end=seen.__setitem__,
    )
    return strategy, result, seen, time.monotonic() - started


def test_the_round_closes_at_the_kth_reply_and_the_slow_node_stays_busy_until_drained():
    slow = 6
    grid = InProcessGrid(
        make_app({}),
        6,
        node_ids=small_ids(6),
        reply_delay_s=lambda pid: 1.5 if pid + 1 == slow else 0.0,
    )
    policy = MeasuredStragglers(over_selection=1.5, deadline_percentile=None)
    strategy, result, seen, _ = _start(grid, policy, rounds=1)
    m = seen[1]
    assert m["clients_selected"] == 6  # 1.5 x the 4 needed
    assert (
        m["clients_completed"] == 4 and m["clients_late"] == 2
    )  # node 5 beyond K, node 6 in flight
    got = record_to_named(result.arrays)
    for k, v in expected_mean([1, 2, 3, 4]).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6)
    assert strategy.in_flight.busy() == {slow}
    # the next rounds never send node 6 a second message while it is busy; its late reply is
    # drained (and its measured time recorded) once it arrives
    messages = strategy.configure_train(2, result.arrays, ConfigRecord(), grid)
    assert slow not in {msg.metadata.dst_node_id for msg in messages}
    time.sleep(1.6)
    out = exchange(grid, messages, timeout=5, in_flight=strategy.in_flight)
    assert [node for node, _ in out.drained] == [slow] and out.drained[0][1] >= 1.5
    assert strategy.in_flight.busy() == set()


def test_too_few_replies_by_the_deadline_keep_the_model_and_log_the_fallback():
    grid = InProcessGrid(
        make_app({}),
        6,
        node_ids=small_ids(6),
        reply_delay_s=lambda pid: 1.0 if pid + 1 > 2 else 0.0,
    )
    policy = MeasuredStragglers(over_selection=1.5, deadline_s=0.2)
    _, result, seen, _ = _start(grid, policy, rounds=1)
    m = seen[1]
    assert m["round_skipped"] == 1 and m["clients_completed"] == 0
    assert m["clients_late"] == 4  # closed at the deadline, not after the 1 s replies
    for k, v in record_to_named(result.arrays).items():
        np.testing.assert_array_equal(v, GLOBAL[k])


def test_partial_aggregation_when_enough_of_the_needed_arrive_by_the_deadline():
    # 6 nodes, 5 needed (fraction 5/6), over-selection 1.0: node 6 misses the 0.3 s deadline;
    # 4 of 5 = 80 % arrived -> aggregate those 4 (partial), 1 failure < 50 %
    grid = InProcessGrid(
        make_app({}),
        6,
        node_ids=small_ids(6),
        reply_delay_s=lambda pid: 2.0 if pid + 1 in (5, 6) else 0.0,
    )
    policy = MeasuredStragglers(over_selection=1.0, deadline_s=0.3, partial_fraction=0.8)
    _, result, seen, _ = _start(grid, policy, rounds=1, fraction=5 / 6)
    m = seen[1]
    assert m["clients_selected"] == 5 and m["clients_completed"] == 4
    assert m["round_skipped"] == 0 and m["round_close_s"] == pytest.approx(0.3)  # the deadline
    got = record_to_named(result.arrays)
    for k, v in expected_mean([1, 2, 3, 4]).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6)


def test_an_error_reply_takes_no_place_among_the_needed_updates():
    grid = InProcessGrid(
        make_app({1: "raise"}),
        6,
        node_ids=small_ids(6),
        reply_delay_s=lambda pid: 1.5 if pid + 1 == 6 else 0.0,
    )
    policy = MeasuredStragglers(over_selection=1.5, deadline_percentile=None)
    strategy, result, seen, _ = _start(grid, policy, rounds=1)
    m = seen[1]
    assert m["clients_failed"] == 1 and m["clients_completed"] == 4 and m["round_skipped"] == 0
    got = record_to_named(result.arrays)
    for k, v in expected_mean([2, 3, 4, 5]).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6)
    assert strategy.in_flight.busy() == {6}
