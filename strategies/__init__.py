"""Flower Message-API strategies composed from fl_ext parts.

The strategies are imported on first use, so a ClientApp that needs only the record helpers
in this package does not import the server side (aggregators, accountants).
"""

from typing import Any

__all__ = ["FlExtFedAvg", "FlExtFedProx"]


def __getattr__(name: str) -> Any:
    if name == "FlExtFedAvg":
        from strategies.fedavg import FlExtFedAvg

        return FlExtFedAvg
    if name == "FlExtFedProx":
        from strategies.fedprox import FlExtFedProx

        return FlExtFedProx
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")
