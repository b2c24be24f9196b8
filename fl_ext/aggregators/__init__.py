"""Aggregation rules on stacked updates ``[n, d]``; inputs are never modified."""

from fl_ext.aggregators.mean import WeightedMean
from fl_ext.aggregators.weights import capped_example_weights

__all__ = ["WeightedMean", "capped_example_weights"]
