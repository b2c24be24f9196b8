"""Flower NumPyClients and the adapter that serves them to a Message-API ClientApp."""

from clients.adapter import numpy_client_app
from clients.dp_sgd_client import DpSgdClient
from clients.sgd_client import SgdClient

__all__ = ["DpSgdClient", "SgdClient", "numpy_client_app"]
