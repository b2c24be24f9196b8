"""Simulated Byzantine clients (simulation only; documented as such).

The designated nodes still train honestly; what the server *receives* from them is replaced:
either the omniscient attack's crafted update (computed from the honest updates of the round,
as an attacker who sees everything would) or, for client-side roles, whatever the client
itself sent after being told its role in the train config. Crafted updates then go through the
same reply checks as any other update.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import torch

from fl_ext.attacks import CLIENT_ROLES, ROLE_KEY, LineSearch, OmniscientAttack
from fl_ext.rng_state import restore_rng, rng_state


class ByzantineSimulation:
    """Which nodes are Byzantine (fixed for the run, from ``seed``) and what they do."""

    def __init__(
        self,
        *,
        num_byzantine: int,
        omniscient: OmniscientAttack | None = None,
        client_role: str | None = None,
        seed: int = 0,
    ) -> None:
        if (
            isinstance(num_byzantine, bool)
            or not isinstance(num_byzantine, int)
            or num_byzantine < 0
        ):
            raise ValueError(f"attack.num_byzantine must be an integer >= 0, got {num_byzantine!r}")
        if omniscient is not None and client_role is not None:
            raise ValueError(
                "an attack is either omniscient (server-crafted) or a client_role, not both"
            )
        if client_role is not None and client_role not in CLIENT_ROLES:
            raise ValueError(
                f"attack.client_role {client_role!r} unknown; allowed: {', '.join(CLIENT_ROLES)}"
            )
        if num_byzantine > 0 and omniscient is None and client_role is None:
            raise ValueError("attack.num_byzantine > 0 needs an omniscient attack or a client_role")
        self.num_byzantine = num_byzantine
        self.omniscient = omniscient
        self.client_role = client_role
        self.seed = seed
        self.byzantine: frozenset[int] | None = None
        self._generator = torch.Generator().manual_seed(seed + 7919)

    def designate(self, node_ids: Iterable[int]) -> frozenset[int]:
        """Choose the Byzantine nodes once, deterministically from the sorted ids and the seed."""
        if self.byzantine is None:
            pool = sorted(node_ids)
            if self.num_byzantine > len(pool):
                raise ValueError(
                    f"attack.num_byzantine={self.num_byzantine} exceeds the {len(pool)} nodes"
                )
            self.byzantine = frozenset(random.Random(self.seed).sample(pool, self.num_byzantine))
        return self.byzantine

    def is_byzantine(self, node_id: int) -> bool:
        """True for a designated node."""
        return self.byzantine is not None and node_id in self.byzantine

    def config_for(self, node_id: int) -> dict[str, str]:
        """Extra train-config entries for ``node_id`` (its role, for client-side attacks)."""
        if self.client_role is not None and self.is_byzantine(node_id):
            return {ROLE_KEY: self.client_role}
        return {}

    def state_dict(self) -> dict[str, Any]:
        """The attack's random generator (the designated nodes follow from the seed)."""
        return {"generator": rng_state(self._generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        restore_rng(self._generator, state["generator"])

    def bind(self, aggregate: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Let an optimized attack evaluate the server's own aggregation."""
        if isinstance(self.omniscient, LineSearch):
            self.omniscient.bind(aggregate)

    def craft(self, honest: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` crafted updates from the honest ones (omniscient attacks only)."""
        if self.omniscient is None:
            raise ValueError("no omniscient attack configured")
        return self.omniscient(honest, count, self._generator)
