"""Flower Message-API strategies composed from fl_ext parts.

The strategies are imported on first use, so importing one light module of this package (e.g.
``strategies.wire``) does not import the server side (aggregators, accountants). The record
helpers both sides share live below it, in :mod:`flwr_records`.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real type for mypy; at run time imported on first use, below
    from strategies.fedavg import FlExtFedAvg

__all__ = ["FlExtFedAvg"]


def __getattr__(name: str) -> Any:
    if name == "FlExtFedAvg":
        from strategies.fedavg import FlExtFedAvg

        return FlExtFedAvg
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")
