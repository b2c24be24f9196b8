"""Federated statistics: exact per-channel moments merged across clients, optional DP noise."""

from fl_ext.stats.moments import Moments, merge, merge_all
from fl_ext.stats.noise import GaussianMomentsNoise

__all__ = ["GaussianMomentsNoise", "Moments", "merge", "merge_all"]
