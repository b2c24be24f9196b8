import numpy as np
import pytest

from fl_ext.data import DirichletPartitioner, IidPartitioner, ShardPartitioner
from fl_ext.data.federated import client_data

LABELS = np.repeat(np.arange(10), 100)
ALL = [IidPartitioner(seed=1), DirichletPartitioner(alpha=0.5, seed=1), ShardPartitioner(seed=1)]


@pytest.mark.parametrize("partitioner", ALL, ids=lambda p: type(p).__name__)
def test_partitions_are_disjoint_complete_and_deterministic(partitioner):
    parts = partitioner(LABELS, 10)
    again = partitioner(LABELS, 10)
    assert len(parts) == 10
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(LABELS.size))


def test_iid_sizes_equal_and_seed_matters():
    parts = IidPartitioner(seed=0)(LABELS, 7)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    other = IidPartitioner(seed=1)(LABELS, 7)
    assert not np.array_equal(parts[0], other[0])


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def mean_classes(alpha):
        parts = DirichletPartitioner(alpha=alpha, min_partition_size=1, seed=0)(LABELS, 10)
        return np.mean([np.count_nonzero(np.bincount(LABELS[p], minlength=10) >= 5) for p in parts])

    assert mean_classes(0.1) < mean_classes(100.0)
    assert mean_classes(100.0) == 10


def test_shards_give_few_classes():
    parts = ShardPartitioner(shards_per_partition=2, seed=0)(LABELS, 10)
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: DirichletPartitioner(alpha=0), "alpha"),
        (lambda: DirichletPartitioner(alpha=-1), "alpha"),
        (lambda: ShardPartitioner(shards_per_partition=0), "shards_per_partition"),
    ],
)
def test_bad_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_more_partitions_than_samples_is_an_error():
    with pytest.raises(ValueError, match="more than the 5 training samples"):
        IidPartitioner()(np.arange(5), 6)
    with pytest.raises(ValueError, match="integer >= 1"):
        IidPartitioner()(np.arange(5), 0)


def test_dirichlet_impossible_minimum_says_why():
    with pytest.raises(ValueError, match="min_partition_size"):
        DirichletPartitioner(alpha=0.01, min_partition_size=90, max_attempts=3)(LABELS, 10)


def test_client_data_matches_partition_and_checks_hash():
    ds = '{"_target_": "fl_ext.data.Digits", "seed": 0, "test_fraction": 0.2}'
    part = '{"_target_": "fl_ext.data.IidPartitioner", "seed": 0}'
    data = [
        client_data(
            dataset_spec_json=ds,
            partition_spec_json=part,
            partition_id=i,
            num_partitions=4,
            local_test_fraction=0.1,
        )
        for i in range(4)
    ]
    assert sum(len(d.train) + len(d.test) for d in data) == 1438
    assert all(len(d.test) >= 1 for d in data)
    assert data[0].input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="dataset hash mismatch"):
        client_data(
            dataset_spec_json=ds,
            partition_spec_json=part,
            partition_id=0,
            num_partitions=4,
            local_test_fraction=0.1,
            expected_hash="0" * 64,
        )
    with pytest.raises(ValueError, match="partition_id"):
        client_data(
            dataset_spec_json=ds,
            partition_spec_json=part,
            partition_id=4,
            num_partitions=4,
            local_test_fraction=0.1,
        )
