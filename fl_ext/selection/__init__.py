"""Client selection: which connected nodes take part in a round."""

from fl_ext.selection.uniform import UniformSelector

__all__ = ["UniformSelector"]
