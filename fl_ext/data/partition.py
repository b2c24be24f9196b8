"""Deterministic partitioners: split training-set indices among ``num_partitions`` clients.

Every partitioner is a pure function of (labels, num_partitions, seed): the server and each
client compute the same split independently, so only the spec has to travel.
"""

from __future__ import annotations

import numpy as np


class Partitioner:
    """Base class: ``partitioner(labels, num_partitions) -> list of index arrays``."""

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)

    def __call__(self, labels: np.ndarray, num_partitions: int) -> list[np.ndarray]:
        """Split ``range(len(labels))`` into ``num_partitions`` disjoint, sorted index arrays."""
        labels = np.asarray(labels)
        check_partition_count(num_partitions, labels.size)
        parts = self.split(labels, num_partitions, np.random.default_rng(self.seed))
        return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]

    def split(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        """Subclasses return the (unsorted) index arrays."""
        raise NotImplementedError


def check_partition_count(num_partitions: int, num_samples: int) -> None:
    """Reject partition counts that cannot give every client at least one example."""
    if not isinstance(num_partitions, int | np.integer) or num_partitions < 1:
        raise ValueError(f"num_partitions must be an integer >= 1, got {num_partitions!r}")
    if num_partitions > num_samples:
        raise ValueError(
            f"num_partitions={num_partitions} is more than the {num_samples} training "
            "samples: every partition needs at least one example"
        )


class IidPartitioner(Partitioner):
    """Shuffle, then cut into equal-size parts (sizes differ by at most one)."""

    def split(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        return list(np.array_split(rng.permutation(labels.size), num_partitions))


class DirichletPartitioner(Partitioner):
    """Label skew: each class is spread over clients by proportions ~ Dir(alpha).

    Small ``alpha`` (0.1) gives each client few classes; large (100) is close to IID.
    Draws are repeated until every client has ``min_partition_size`` examples.
    """

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        min_partition_size: int = 10,
        max_attempts: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__(seed=seed)
        if not alpha > 0:
            raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
        if min_partition_size < 0:
            raise ValueError(f"min_partition_size must be >= 0, got {min_partition_size}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self.alpha = float(alpha)
        self.min_partition_size = int(min_partition_size)
        self.max_attempts = int(max_attempts)

    def split(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        if num_partitions * self.min_partition_size > labels.size:
            raise ValueError(
                f"{num_partitions} partitions of at least {self.min_partition_size} examples "
                f"need {num_partitions * self.min_partition_size} samples; only "
                f"{labels.size} available"
            )
        classes = np.unique(labels)
        smallest = 0
        for _ in range(self.max_attempts):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_partitions)]
            for label in classes:
                idx = rng.permutation(np.flatnonzero(labels == label))
                shares = rng.dirichlet(np.full(num_partitions, self.alpha))
                cuts = (np.cumsum(shares)[:-1] * idx.size).astype(np.int64)
                for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                    part.append(chunk)
            result = [np.concatenate(p) for p in parts]
            smallest = min(r.size for r in result)
            if smallest >= self.min_partition_size:
                return result
        raise ValueError(
            f"Dirichlet(alpha={self.alpha}) gave a partition smaller than "
            f"min_partition_size={self.min_partition_size} in {self.max_attempts} attempts "
            f"(last smallest: {smallest}); raise alpha, lower min_partition_size or use "
            "fewer partitions"
        )


class ShardPartitioner(Partitioner):
    """McMahan et al. (2017) pathological non-IID: sort by label, deal out equal shards."""

    def __init__(self, *, shards_per_partition: int = 2, seed: int = 0) -> None:
        super().__init__(seed=seed)
        if shards_per_partition < 1:
            raise ValueError(f"shards_per_partition must be >= 1, got {shards_per_partition}")
        self.shards_per_partition = int(shards_per_partition)

    def split(
        self, labels: np.ndarray, num_partitions: int, rng: np.random.Generator
    ) -> list[np.ndarray]:
        num_shards = num_partitions * self.shards_per_partition
        if num_shards > labels.size:
            raise ValueError(
                f"{num_partitions} partitions x {self.shards_per_partition} shards = "
                f"{num_shards} shards exceed the {labels.size} samples"
            )
        by_label = np.argsort(labels, kind="stable")
        shards = np.array_split(by_label, num_shards)
        order = rng.permutation(num_shards).reshape(num_partitions, self.shards_per_partition)
        return [np.concatenate([shards[s] for s in row]) for row in order]
