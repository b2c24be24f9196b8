"""fl-ext engine: framework-free math and helpers for federated learning.

Nothing under ``fl_ext`` imports Flower: robust statistics, data, models, checks and
tracking are plain torch/numpy code, testable on their own and reusable outside Flower.
"""

__version__ = "0.1.0"
