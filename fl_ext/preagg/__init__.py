"""Pre-aggregation: maps the n updates to m vectors before a robust rule (never in place)."""

from fl_ext.preagg.arc import ARC
from fl_ext.preagg.base import PreAggregator
from fl_ext.preagg.bucketing import Bucketing
from fl_ext.preagg.clipping import StaticClipping
from fl_ext.preagg.nnm import NNM

__all__ = ["ARC", "NNM", "Bucketing", "PreAggregator", "StaticClipping"]
