"""The buffered asynchronous driver (FedBuff) on the in-process grid: real Messages."""

import time
from collections import Counter, OrderedDict

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_ext.asynchronous.staleness import Staleness
from fl_ext.selection.network import SimulatedNetwork
from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.buffered import BufferedAsync

GLOBAL = OrderedDict(w=np.zeros(4, np.float32))


def make_app(fail=(), same=False):
    """Partition p adds p + 1 (``same``: 1) to every weight; those in ``fail`` raise."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context) -> Message:
        pid = int(context.node_config["partition-id"])
        if pid in fail:
            raise RuntimeError("client crashed")
        arrays = record_to_named(msg.content["arrays"])
        new = OrderedDict(w=arrays["w"] + np.float32(1 if same else pid + 1))
        metrics = MetricRecord({"num-examples": 10, "train_loss": 0.5})
        return Message(
            RecordDict({"arrays": named_array_record(new), "metrics": metrics}), reply_to=msg
        )

    return app


class CountingGrid(InProcessGrid):
    """Counts jobs per node and the most messages ever in flight to one node."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs: Counter[int] = Counter()
        self.outstanding: dict[str, int] = {}
        self.max_in_flight = 0

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for msg in messages:
            if msg.metadata.message_id in ids:
                node = int(msg.metadata.dst_node_id)
                self.jobs[self.partition[node]] += 1
                self.outstanding[msg.metadata.message_id] = node
        per_node = Counter(self.outstanding.values())
        self.max_in_flight = max(self.max_in_flight, max(per_node.values(), default=0))
        return ids

    def pull_messages(self, message_ids):
        got = list(super().pull_messages(message_ids))
        for reply in got:
            self.outstanding.pop(reply.metadata.reply_to_message_id, None)
        return got


def run(grid, *, versions, on_round_end=None, **driver_kw):
    driver = BufferedAsync(**driver_kw)
    strategy = FlExtFedAvg(
        fraction_evaluate=0, min_available_nodes=len(list(grid.get_node_ids())), driver=driver
    )
    rows: dict[int, dict[str, float]] = {}
    result = strategy.start(
        grid, named_array_record(GLOBAL), num_rounds=versions, timeout=10,
        on_round_end=rows.__setitem__,
    )  # fmt: skip
    return record_to_named(result.arrays)["w"], rows, driver


def test_each_version_is_the_server_lr_times_the_staleness_weighted_mean_float64():
    """Every client adds 1: version v moves the model by lr * mean_i s(tau_i), exactly."""
    grid = InProcessGrid(make_app(same=True), 8)
    net = SimulatedNetwork(profile="mixed", seed=0)  # the virtual clock orders the arrivals
    w, rows, _ = run(grid, versions=6, concurrency=4, buffer_size=2, server_lr=0.5, network=net,
                     seconds_per_example=0.001)  # fmt: skip
    expected = sum(0.5 * rows[v]["staleness_weight_mean"] for v in range(1, 7))  # float64
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert any(rows[v]["staleness_max"] >= 1 for v in rows)  # slots refilled at once: stale
    weights = {rows[v]["staleness_weight_mean"] for v in rows}
    assert max(weights) == 1.0 and min(weights) < 1.0  # 1/sqrt(1 + tau)


def test_fast_nodes_keep_training_while_a_slow_one_trains_and_staleness_is_the_servers():
    grid = CountingGrid(make_app(), 4, reply_delay_s=lambda pid: 3.0 if pid == 0 else 0.01)
    _, rows, _ = run(grid, versions=8, concurrency=4, buffer_size=2)
    assert grid.max_in_flight == 1  # never two messages to one node
    assert grid.jobs[0] <= 2 and min(grid.jobs[p] for p in (1, 2, 3)) >= 5
    # the slow node's update started versions earlier: the server says so, the client never did
    assert max(r["staleness_max"] for r in rows.values()) >= 1


def test_updates_staler_than_max_staleness_are_dropped_and_counted():
    grid = InProcessGrid(make_app(), 4, reply_delay_s=lambda pid: 3.0 if pid == 0 else 0.01)
    _, rows, _ = run(grid, versions=8, concurrency=4, buffer_size=2, max_staleness=0)
    assert all(r["staleness_max"] == 0 for r in rows.values())
    assert rows[8]["async_dropped_stale"] >= 1


def test_staleness_weights_scale_the_buffered_updates():
    """Node 0 (slow, adds 1) arrives stale; with s = 1/(1+tau) its share shrinks."""
    grid = InProcessGrid(make_app(), 2, reply_delay_s=lambda pid: 0.05 if pid == 0 else 0.01)
    kind = Staleness(kind="polynomial", a=1.0)
    _, rows, _ = run(grid, versions=10, concurrency=2, buffer_size=2, staleness=kind)
    for r in rows.values():  # mean of 1/(1+tau) over the buffer, from the server's taus
        assert r["staleness_weight_mean"] <= 1.0
    assert any(r["staleness_weight_mean"] < 1.0 for r in rows.values())


def test_a_failing_node_is_retried_elsewhere_and_cools_down():
    grid = CountingGrid(make_app(fail={0}), 4)
    w, rows, driver = run(grid, versions=6, concurrency=3, buffer_size=2, backoff_s=0.0,
                          cooldown_failures=2, cooldown_s=60.0)  # fmt: skip
    assert grid.jobs[0] == 2  # two failures, then cooling down for the rest of the run
    assert rows[6]["async_failed"] == 2 and driver.failures[grid.node_id(0)] == 2
    assert np.all(w > 0)  # the others trained every version


class VersionGrid(InProcessGrid):
    """Records (node, server-round) of every accepted push."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[int, int]] = []

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(super().push_messages(messages))
        for msg in messages:
            if msg.metadata.message_id in ids:
                rnd = int(msg.content["config"]["server-round"])
                self.sent.append((int(msg.metadata.dst_node_id), rnd))
        return ids


def test_simulated_availability_and_dropouts_apply_to_jobs():
    """No job goes to a node offline for its version; dropped jobs fail and are not used."""
    net = SimulatedNetwork(profile="mobile", seed=3)  # online 0.8, dropout 0.1 per version
    grid = VersionGrid(make_app(same=True), 12)
    w, rows, driver = run(grid, versions=12, concurrency=6, buffer_size=3, network=net,
                          seconds_per_example=0.001, backoff_s=0.0)  # fmt: skip
    assert len(grid.sent) >= 36
    assert all(net.online(node, rnd) for node, rnd in grid.sent)
    dropped = [(n, r) for n, r in grid.sent if net.drops(n, r)]
    assert dropped and driver.counters["dropped_out"] >= 1
    assert rows[12]["async_dropped_out"] == driver.counters["dropped_out"] <= len(dropped)
    # every version still moves by lr * mean s(tau): a dropped update never joined a buffer
    expected = sum(rows[v]["staleness_weight_mean"] for v in range(1, 13))
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    assert rows[12]["sim_time_s"] > 0


def test_on_the_simulated_clock_compute_is_modeled_not_measured():
    """Two runs give the same clock and versions, whatever the machine's load."""

    def once():
        net = SimulatedNetwork(profile="mixed", seed=1)
        grid = InProcessGrid(make_app(), 8, reply_delay_s=lambda pid: 0.002 * pid)
        w, rows, _ = run(grid, versions=5, concurrency=4, buffer_size=2, network=net,
                         seconds_per_example=0.001)  # fmt: skip
        return w.tolist(), [rows[v]["sim_time_s"] for v in rows]

    assert once() == once()


class VanishingGrid(CountingGrid):
    """Node 0 is gone from ``get_node_ids`` from its first push until ``gone_s`` later."""

    def __init__(self, *args, gone_s=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.gone_s, self.first_push = gone_s, None

    def push_messages(self, messages):
        messages = list(messages)
        if self.first_push is None and any(
            self.partition.get(int(m.metadata.dst_node_id)) == 0 for m in messages
        ):
            self.first_push = time.monotonic()
        return super().push_messages(messages)

    def get_node_ids(self):
        ids = list(super().get_node_ids())
        gone = self.first_push is not None and time.monotonic() < self.first_push + self.gone_s
        return [n for n in ids if not (gone and self.partition[n] == 0)]


@pytest.mark.parametrize("vanishes", [True, False])
def test_a_message_never_answered_is_lost_only_if_its_node_left_and_came_back(vanishes):
    """Killed and restarted with its message: asked again. Only slow: never a second message."""
    grid_type = VanishingGrid if vanishes else CountingGrid
    grid = grid_type(make_app(), 3, reply_delay_s=lambda pid: 1e6 if pid == 0 else 0.05)
    _, _, driver = run(grid, versions=50, concurrency=3, buffer_size=2, job_timeout_s=0.2,
                       backoff_s=0.0, cooldown_failures=100)  # fmt: skip
    assert driver.counters["timed_out"] >= 1
    if vanishes:
        assert driver.counters["lost"] >= 1 and grid.jobs[0] >= 2
    else:
        assert driver.counters["lost"] == 0 and grid.jobs[0] == 1 and grid.max_in_flight == 1


class NobodyOnline(SimulatedNetwork):
    def online(self, node_id, server_round):
        return False


def test_a_simulated_network_with_nobody_online_fails_at_once_with_the_reason():
    """The virtual clock cannot move without an arrival: an error, not an endless wait."""
    with pytest.raises(RuntimeError, match=r"version 1: .* 3 node\(s\) are offline"):
        run(InProcessGrid(make_app(), 3), versions=2, concurrency=2, buffer_size=2,
            network=NobodyOnline(profile="ideal"), seconds_per_example=0.001)  # fmt: skip


def test_the_drivers_state_survives_a_restart():
    driver = BufferedAsync(concurrency=2, buffer_size=1)
    driver.clock_s, driver.failures, driver.counters["failed"] = 12.5, {2**63 + 5: 2}, 3
    restored = BufferedAsync(concurrency=2, buffer_size=1)
    restored.load_state_dict(driver.state_dict(), first_round=4)
    assert (restored.clock_s, restored.failures) == (12.5, {2**63 + 5: 2})
    assert restored.counters["failed"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 2, "buffer_size": 3}, "could never fill"),
        ({"concurrency": 0}, "concurrency must be"),
        ({"drain": "later"}, "drain must be one of"),
        ({"staleness": {"kind": "exp"}}, "staleness kind must be one of"),
    ],
)
def test_bad_settings_are_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BufferedAsync(**kwargs)


def test_staleness_functions():
    assert Staleness()(0) == 1.0 and Staleness()(3) == pytest.approx(0.5)
    assert Staleness(kind="hinge", a=1.0, b=2)(2) == 1.0
    assert Staleness(kind="hinge", a=1.0, b=2)(4) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="integer >= 0"):
        Staleness()(-1)
