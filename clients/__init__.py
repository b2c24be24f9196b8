"""Flower NumPyClients and the adapter that serves them to a Message-API ClientApp.

``DpSgdClient`` is imported on first use: it needs Opacus, which a plain client's process
(one per message on a SuperNode) should not pay for.
"""

from typing import Any

from clients.adapter import numpy_client_app
from clients.sgd_client import SgdClient

__all__ = ["DpSgdClient", "SgdClient", "numpy_client_app"]


def __getattr__(name: str) -> Any:
    if name == "DpSgdClient":
        from clients.dp_sgd_client import DpSgdClient

        return DpSgdClient
    raise AttributeError(f"module 'clients' has no attribute {name!r}")
