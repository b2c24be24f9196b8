"""FedProx (Li et al., 2020): FedAvg on the server, a proximal term on every client."""

from __future__ import annotations

from typing import Any

from flwr.supercore import log

from strategies.fedavg import FlExtFedAvg


class FlExtFedProx(FlExtFedAvg):
    """Sends ``proximal-mu`` to clients, who add ``mu/2 ||w - w_global||^2`` to their loss."""

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        if not proximal_mu >= 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        super().__init__(**kwargs)
        self.proximal_mu = float(proximal_mu)

    def train_config_entries(self, server_round: int) -> dict[str, Any]:
        return {**super().train_config_entries(server_round), "proximal-mu": self.proximal_mu}

    def summary(self) -> None:
        log(20, "\t├──> proximal mu: %s", self.proximal_mu)
        super().summary()
