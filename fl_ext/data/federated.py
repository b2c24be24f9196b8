"""The data one client sees: its partition of the training side, split into local train/test.

Clients rebuild this from the specs in the train/evaluate config (never from conf/), check the
dataset hash against the server's, and cache the result for the life of the process.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from fl_ext.data.datasets import (
    ArrayDataset,
    DatasetSource,
    TrainTestSplit,
    content_hash,
    stratified_split,
)
from fl_ext.data.partition import Partitioner
from fl_ext.specs import build_from_spec, spec_from_json


@dataclass(frozen=True)
class ClientData:
    """A client's local train and test examples plus what it needs to build the model."""

    train: ArrayDataset
    test: ArrayDataset
    input_shape: tuple[int, ...]
    num_classes: int
    partition_hash: str = ""  # SHA-256 of this partition's examples: reported, never the data

    @property
    def num_examples(self) -> int:
        """Examples in the partition (local train plus local test)."""
        return len(self.train) + len(self.test)


@lru_cache(maxsize=4)
def load_split(dataset_spec_json: str) -> TrainTestSplit:
    """Load a dataset from its JSON spec once per process."""
    source = build_from_spec(spec_from_json(dataset_spec_json), DatasetSource)
    return source.load()


@lru_cache(maxsize=8)
def partition_indices(
    dataset_spec_json: str, partition_spec_json: str, num_partitions: int
) -> tuple[np.ndarray, ...]:
    """All partitions' training indices, computed once per process."""
    split = load_split(dataset_spec_json)
    partitioner = build_from_spec(spec_from_json(partition_spec_json), Partitioner)
    return tuple(partitioner(split.train.y, num_partitions))


def client_data(
    *,
    dataset_spec_json: str,
    partition_spec_json: str,
    partition_id: int,
    num_partitions: int,
    local_test_fraction: float,
    expected_hash: str | None = None,
) -> ClientData:
    """Return partition ``partition_id``'s data; refuse if the dataset hash differs."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id {partition_id} outside [0, {num_partitions})")
    if not 0.0 <= local_test_fraction < 1.0:
        raise ValueError(f"local_test_fraction must be in [0, 1), got {local_test_fraction}")
    split = load_split(dataset_spec_json)
    if expected_hash is not None and split.content_hash != expected_hash:
        raise ValueError(
            f"dataset hash mismatch: this client has {split.content_hash[:12]}, the server "
            f"expects {expected_hash[:12]}; both sides must use the same dataset release"
        )
    indices = partition_indices(dataset_spec_json, partition_spec_json, num_partitions)
    part = split.train.subset(indices[partition_id])
    if local_test_fraction > 0 and len(part) >= 2:
        rng_seed = 1_000_003 * (partition_id + 1)
        local_train, local_test = _random_split(len(part), local_test_fraction, rng_seed)
        train, test = part.subset(local_train), part.subset(local_test)
    else:
        train, test = part, part.subset(np.arange(0))
    return ClientData(
        train, test, split.input_shape, split.num_classes, content_hash(part.x, part.y)
    )


def _random_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(round(fraction * n), 1), n - 1)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


__all__ = ["ClientData", "client_data", "load_split", "partition_indices", "stratified_split"]
