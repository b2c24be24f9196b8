"""The statistics phase over an in-process grid of real ClientApps: exact, checked, refused."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_ext.data.federated import client_data
from fl_ext.specs import spec_to_json
from flwr_records import named_array_record, record_to_named
from simulations.client_app import app as real_app
from simulations.inprocess import InProcessGrid
from strategies.federated_stats import FederatedStatistics

DATASET = spec_to_json({"_target_": "fl_ext.data.Digits", "test_fraction": 0.2, "seed": 0})
PARTITION = spec_to_json({"_target_": "fl_ext.data.DirichletPartitioner", "alpha": 0.5, "seed": 0})
CONFIG = ConfigRecord(
    {"dataset-spec": DATASET, "partition-spec": PARTITION, "local-test-fraction": 0.1}
)


def _local_train(pid, n):
    return client_data(
        dataset_spec_json=DATASET,
        partition_spec_json=PARTITION,
        partition_id=pid,
        num_partitions=n,
        local_test_fraction=0.1,
    ).train.x


def test_the_phase_equals_numpy_on_the_pooled_training_data():
    n = 6
    grid = InProcessGrid(real_app, n)
    result = FederatedStatistics(min_count=5).run(
        grid, grid.get_node_ids(), CONFIG, input_shape=(1, 8, 8)
    )
    pooled = np.concatenate([_local_train(p, n) for p in range(n)]).astype(np.float64)
    assert result.clients == n and result.examples == pooled.shape[0]
    assert result.moments.mean[0] == pytest.approx(pooled.mean(), rel=1e-12)
    assert result.moments.variance()[0] == pytest.approx(pooled.var(), rel=1e-11)
    norm = result.normalization()
    assert norm.std[0] == pytest.approx(pooled.std(), rel=1e-11)
    assert set(result.data_versions) == set(grid.get_node_ids())
    assert all(len(h) == 64 and size > 0 for h, size in result.data_versions.values())
    assert result.bytes_up > 0 and result.bytes_down > 0
    assert result.to_json()["format"] == "fl-ext-federated-stats/1"


def _hostile_app(lies):
    """The real app, except partitions in ``lies`` answer with the given (mutated) reply."""
    app = ClientApp()

    @app.query("fedstats")
    def _stats(msg: Message, context: Context) -> Message:
        pid = int(context.node_config["partition-id"])
        honest = real_app(msg, context)
        if pid not in lies:
            return honest
        arrays = record_to_named(honest.content["stats"])
        metrics = dict(honest.content["metrics"])
        data = dict(honest.content.config_records["data"])
        lies[pid](arrays, metrics, data)
        content = RecordDict(
            {
                "stats": named_array_record(arrays),
                "metrics": MetricRecord(metrics),
                "data": ConfigRecord(data),
            }
        )
        return Message(content, reply_to=msg)

    return app


def _set(key, value):
    return lambda arrays, metrics, data: arrays.__setitem__(key, value)


LIES = {
    0: _set("mean", np.array([2.0])),  # outside [0, 1]
    1: _set("m2", np.array([1e12])),  # more spread than [0, 1] allows
    2: _set("count", np.array([3], dtype=np.int64)),  # != num-examples x 64
    3: _set("mean", np.array([0.1, 0.2])),  # two channels for a one-channel image
    4: lambda a, m, d: d.__setitem__("partition-hash", "not-a-hash"),
    5: lambda a, m, d: m.__setitem__("num-examples", 2),  # below min_count
    6: _set("m2", np.array([np.nan])),
}


def test_inconsistent_or_impossible_moments_are_rejected_and_the_rest_merged():
    n = 10
    grid = InProcessGrid(_hostile_app(dict(LIES)), n)
    result = FederatedStatistics(min_count=5).run(
        grid, grid.get_node_ids(), CONFIG, input_shape=(1, 8, 8)
    )
    liars = {grid.node_id(p) for p in LIES}
    assert set(result.rejected) == liars
    assert result.clients == n - len(LIES)
    honest = [p for p in range(n) if p not in LIES]
    pooled = np.concatenate([_local_train(p, n) for p in honest]).astype(np.float64)
    assert result.moments.mean[0] == pytest.approx(pooled.mean(), rel=1e-12)
    reasons = " | ".join(result.rejected.values())
    for word in ("outside", "m2", "counts", "shape_mismatch", "partition-hash", "num-examples"):
        assert word in reasons


def test_small_clients_decline_and_too_little_data_fails_the_phase():
    n = 4
    grid = InProcessGrid(real_app, n)
    big = max(len(_local_train(p, n)) for p in range(n))
    with pytest.raises(RuntimeError, match="usable replies"):
        FederatedStatistics(min_count=big + 1).run(
            grid, grid.get_node_ids(), CONFIG, input_shape=(1, 8, 8)
        )
    result = FederatedStatistics(min_count=1, min_clients=4).run(
        grid, grid.get_node_ids(), CONFIG, input_shape=(1, 8, 8)
    )
    assert result.clients == 4 and not result.declined


def test_noisy_statistics_record_the_release_before_publishing():
    grid = InProcessGrid(real_app, 3)
    spent = {}
    result = FederatedStatistics(min_count=5, noise_multiplier=5.0).run(
        grid, grid.get_node_ids(), CONFIG, input_shape=(1, 8, 8), record_spend=spent.update
    )
    assert sorted(spent) == ["0", "1", "2"]
    assert all(e.as_list() == [5.0, 1.0, 1] for e in spent.values())
    assert 0.0 <= result.moments.mean[0] <= 1.0
    with pytest.raises(ValueError, match="ledger"):
        FederatedStatistics(noise_multiplier=1.0).run(
            grid, grid.get_node_ids(), CONFIG, input_shape=(1, 8, 8)
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_count": 0}, "min_count"),
        ({"min_clients": True}, "min_clients"),
        ({"noise_multiplier": -1}, "noise_multiplier"),
        ({"value_range": (1, 1)}, "value_range"),
        ({"timeout_s": 0}, "timeout_s"),
    ],
)
def test_settings_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FederatedStatistics(**kwargs)
