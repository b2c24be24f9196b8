"""Aggregation rules on stacked updates ``[n, d]``; inputs are never modified."""

from fl_ext.aggregators.base import Aggregator, NotEnoughInputs
from fl_ext.aggregators.bulyan import Bulyan
from fl_ext.aggregators.centered_clipping import CenteredClipping
from fl_ext.aggregators.distances import pairwise_sq_distances
from fl_ext.aggregators.fltrust import FLTrust
from fl_ext.aggregators.geometric_median import GeometricMedian
from fl_ext.aggregators.krum import Krum, MultiKrum
from fl_ext.aggregators.mean import WeightedMean
from fl_ext.aggregators.median import CoordinateMedian
from fl_ext.aggregators.pipeline import RobustAggregation
from fl_ext.aggregators.state import AggregatorState
from fl_ext.aggregators.trimmed_mean import TrimmedMean
from fl_ext.aggregators.weights import capped_example_weights

__all__ = [
    "Aggregator",
    "AggregatorState",
    "Bulyan",
    "CenteredClipping",
    "CoordinateMedian",
    "FLTrust",
    "GeometricMedian",
    "Krum",
    "MultiKrum",
    "NotEnoughInputs",
    "RobustAggregation",
    "TrimmedMean",
    "WeightedMean",
    "capped_example_weights",
    "pairwise_sq_distances",
]
