import numpy as np
import pytest
from flwr.app import ConfigRecord

from fl_ext.aggregators import CoordinateMedian
from fl_ext.attacks import SignFlip
from flwr_records import named_array_record, record_to_named
from simulations.inprocess import InProcessGrid
from strategies import FlExtFedAvg
from strategies.byzantine import ByzantineSimulation

from .test_fedavg import GLOBAL, make_app, small_ids


def test_designation_is_deterministic_and_fixed():
    a = ByzantineSimulation(num_byzantine=3, omniscient=SignFlip(), seed=5)
    b = ByzantineSimulation(num_byzantine=3, omniscient=SignFlip(), seed=5)
    nodes = [11, 4, 99, 7, 23, 42]
    assert a.designate(nodes) == b.designate(list(reversed(nodes)))
    assert len(a.designate(nodes)) == 3
    assert a.designate([1, 2, 3]) == b.byzantine  # fixed after the first call


def test_client_role_goes_only_to_byzantine_nodes():
    grid = InProcessGrid(make_app({}), 6, node_ids=small_ids(6))
    byz = ByzantineSimulation(num_byzantine=2, client_role="label_flip", seed=1)
    strategy = FlExtFedAvg(byzantine=byz)
    messages = list(strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid))
    roles = {m.metadata.dst_node_id: m.content["config"].get("attack-role") for m in messages}
    assert {n for n, r in roles.items() if r == "label_flip"} == set(byz.byzantine)
    assert sum(r is None for r in roles.values()) == 4


def test_crafted_updates_replace_byzantine_rows_and_are_checked():
    grid = InProcessGrid(make_app({}), 7, node_ids=small_ids(7))
    byz = ByzantineSimulation(num_byzantine=2, omniscient=SignFlip(), seed=3)
    strategy = FlExtFedAvg(byzantine=byz, aggregation=CoordinateMedian(f=2), max_update_norm=None)
    messages = strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    honest = sorted(set(range(1, 8)) - set(byz.byzantine))
    # honest deltas are node ids; two Byzantine rows at -mean(honest): median of the 7 values
    values = sorted(honest + [-float(np.mean(honest))] * 2)
    np.testing.assert_allclose(record_to_named(arrays)["b"], values[3], rtol=1e-6)
    assert strategy.round_log.byzantine == 2


def test_crafted_update_over_the_norm_bound_is_rejected():
    grid = InProcessGrid(make_app({}), 5, node_ids=small_ids(5))
    byz = ByzantineSimulation(num_byzantine=1, omniscient=SignFlip(), seed=0)
    strategy = FlExtFedAvg(byzantine=byz, max_update_norm=1.0)  # honest deltas have norm 4n
    messages = strategy.configure_train(1, named_array_record(GLOBAL), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages))
    assert arrays is None  # everyone rejected: honest too (norm bound), round skipped
    assert strategy.round_log.rejected["norm_too_large"] == 5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_byzantine": -1, "omniscient": SignFlip()},
        {"num_byzantine": 2},
        {"num_byzantine": 2, "client_role": "explode"},
        {"num_byzantine": 2, "client_role": "nan_update", "omniscient": SignFlip()},
    ],
)
def test_bad_attack_configs(kwargs):
    with pytest.raises(ValueError, match="attack"):
        ByzantineSimulation(**kwargs)
