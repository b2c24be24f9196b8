"""Offline datasets, deterministic partitioners and the per-client data view."""

from fl_ext.data.datasets import ArrayDataset, DatasetSource, Digits, Mnist5k, TrainTestSplit
from fl_ext.data.partition import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    ShardPartitioner,
)

__all__ = [
    "ArrayDataset",
    "DatasetSource",
    "Digits",
    "DirichletPartitioner",
    "IidPartitioner",
    "Mnist5k",
    "Partitioner",
    "ShardPartitioner",
    "TrainTestSplit",
]
