"""The secure-aggregation driver on the in-process grid: real Messages, real client mods."""

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.mods import ClientInfoMod
from clients.mods.secagg import SecAggMod, add_secagg
from fl_ext.aggregators import CoordinateMedian
from fl_ext.attacks.omniscient import SignFlip
from fl_ext.codecs import BlockQuant
from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.byzantine import ByzantineSimulation
from strategies.compression import Compression
from strategies.dropout import SimulatedDropout
from strategies.secure_aggregation import SecureAggregation

GLOBAL = OrderedDict(w=np.zeros((20, 30), np.float32), b=np.zeros(30, np.float32))
CLIP = 0.1
STEP = CLIP / 127


def delta_of(pid: int) -> OrderedDict:
    rng = np.random.default_rng(pid)
    return OrderedDict(
        (k, rng.uniform(-0.05, 0.05, v.shape).astype(np.float32)) for k, v in GLOBAL.items()
    )


def make_app(behaviour=None):
    """Partition p replies global + delta_of(p); ``behaviour[p]`` makes it misbehave."""
    behaviour = behaviour or {}
    app = ClientApp(mods=[ClientInfoMod(GLOBAL), SecAggMod()])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        if behaviour.get(pid) == "raise":
            raise RuntimeError("client crashed")
        arrays = record_to_named(msg.content["arrays"])
        new = OrderedDict((k, v + delta_of(pid)[k]) for k, v in arrays.items())
        metrics = MetricRecord({"num-examples": 10, "train_loss": 0.5})
        return Message(
            RecordDict({"arrays": named_array_record(new), "metrics": metrics}), reply_to=msg
        )

    return add_secagg(app)


def run(grid, *, rounds=1, stages=(), **secure_kw):
    secure = SecureAggregation(clip_range=CLIP, seed=0, **secure_kw)
    strategy = FlExtFedAvg(
        fraction_evaluate=0,
        min_available_nodes=len(list(grid.get_node_ids())),
        secure_aggregation=secure,
        stages=stages,
    )
    result = strategy.start(grid, named_array_record(GLOBAL), num_rounds=rounds, timeout=30)
    return result, strategy


def mean_delta(pids):
    return OrderedDict(
        (k, np.mean([delta_of(p)[k] for p in pids], axis=0, dtype=np.float64)) for k in GLOBAL
    )


def assert_close(arrays, expected, tol=STEP):
    for key in GLOBAL:
        assert np.abs(arrays[key] - expected[key]).max() <= tol, key


@pytest.mark.parametrize("graph", ["plus", "full"])
def test_the_unmasked_mean_is_the_mean_of_the_clients_updates(graph):
    grid = InProcessGrid(make_app(), 8)
    result, _ = run(grid, graph=graph)
    assert_close(record_to_named(result.arrays), mean_delta(range(8)))
    metrics = result.train_metrics_clientapp[1]
    assert metrics["secagg_survivors_unmask"] == 8 and metrics["secagg_rounds_abandoned"] == 0
    assert metrics["secagg_bits"] == 11  # 8 clients x 127 levels fits a signed 11-bit sum


@pytest.mark.parametrize("phase", ["keys", "shares", "train", "unmask"])
def test_dropouts_at_every_phase_up_to_the_threshold_still_unmask(phase):
    grid = InProcessGrid(make_app(), 10)
    dropout = SimulatedDropout(fraction=0.3, phase=phase, seed=1)
    dropped = dropout.dropped(1, list(grid.get_node_ids()))
    result, _ = run(grid, stages=[dropout], graph="full")
    alive = [grid.partition[n] for n in grid.get_node_ids() if n not in dropped]
    # a node that drops in the unmask phase already sent its masked input: it is in the sum
    counted = range(10) if phase == "unmask" else alive
    assert_close(record_to_named(result.arrays), mean_delta(counted))
    metrics = result.train_metrics_clientapp[1]
    assert metrics["secagg_survivors_masked"] == len(counted)


def test_too_many_dropouts_abandon_the_round_and_keep_the_model():
    grid = InProcessGrid(make_app(), 6)
    result, strategy = run(grid, stages=[SimulatedDropout(fraction=0.5, phase="train", seed=0)],
                           graph="full", threshold=0.9, rounds=2)  # fmt: skip
    arrays = record_to_named(result.arrays)
    assert all(np.array_equal(arrays[k], GLOBAL[k]) for k in GLOBAL)
    assert strategy.secure_aggregation.rounds_abandoned == 2
    assert result.train_metrics_clientapp[2]["secagg_rounds_abandoned"] == 2


def test_a_crashing_client_is_a_dropout_and_the_rest_is_unmasked():
    grid = InProcessGrid(make_app({2: "raise"}), 6)
    result, _ = run(grid, graph="full")
    assert_close(record_to_named(result.arrays), mean_delta([0, 1, 3, 4, 5]))


def test_a_late_reply_of_a_closed_phase_is_never_counted():
    """Node 0's replies come after every phase closed: it is a dropout, drained as late."""
    grid = InProcessGrid(make_app(), 6, reply_delay_s=lambda pid: 1.5 if pid == 0 else 0.0)
    secure = SecureAggregation(clip_range=CLIP, seed=0, graph="full",
                               timeouts={"keys": 0.5, "shares": 5, "unmask": 5})  # fmt: skip
    strategy = FlExtFedAvg(fraction_evaluate=0, min_available_nodes=6, secure_aggregation=secure)
    result = strategy.start(grid, named_array_record(GLOBAL), num_rounds=2, timeout=5)
    metrics = result.train_metrics_clientapp
    assert metrics[1]["secagg_survivors_keys"] == metrics[2]["secagg_survivors_keys"] == 5
    twice = OrderedDict((k, 2 * v) for k, v in mean_delta([1, 2, 3, 4, 5]).items())
    assert_close(record_to_named(result.arrays), twice, tol=2 * STEP)  # node 0 never counted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregation": CoordinateMedian()}, "cannot be combined with"),
        ({"max_update_norm": 10.0}, "max_update_norm cannot be checked"),
        ({"compression": Compression(uplink=BlockQuant())}, "both take the decoder slot"),
        (
            {"byzantine": ByzantineSimulation(num_byzantine=1, omniscient=SignFlip())},
            "individual_updates",
        ),
    ],
)
def test_what_needs_individual_updates_is_refused_at_start(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlExtFedAvg(secure_aggregation=SecureAggregation(), **kwargs)


def test_a_modulus_that_could_wrap_is_refused_with_the_numbers():
    strategy = FlExtFedAvg(secure_aggregation=SecureAggregation(bits=8, size=1000))
    with pytest.raises(ValueError, match=r"bits=8 could wrap: 10 clients x weight cap 1 x 127"):
        strategy.check_federation(10)


def test_another_driver_cannot_run_secure_aggregation():
    from strategies.buffered import BufferedAsync

    with pytest.raises(ValueError, match="cannot drive it"):
        FlExtFedAvg(secure_aggregation=SecureAggregation(), driver=BufferedAsync())
