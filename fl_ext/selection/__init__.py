"""Client selection: which connected nodes take part in a round."""

from fl_ext.selection.base import Selector
from fl_ext.selection.oort import OortSelector, PowerOfChoiceSelector
from fl_ext.selection.registry import ClientRegistry, NodeRecord
from fl_ext.selection.uniform import UniformSelector
from fl_ext.selection.weighted import WeightedSelector

__all__ = [
    "ClientRegistry",
    "NodeRecord",
    "OortSelector",
    "PowerOfChoiceSelector",
    "Selector",
    "UniformSelector",
    "WeightedSelector",
]
