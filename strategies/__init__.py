"""Flower Message-API strategies composed from fl_ext parts."""

from strategies.fedavg import FlExtFedAvg
from strategies.fedprox import FlExtFedProx

__all__ = ["FlExtFedAvg", "FlExtFedProx"]
