"""Simulated Byzantine clients (simulation only; documented as such).

The designated nodes still train honestly; what the server *receives* from them is replaced:
either the omniscient attack's crafted update (computed from the honest updates of the round,
as an attacker who sees everything would) or, for client-side roles, whatever the client
itself sent after being told its role in the train config. Crafted updates then go through the
same reply checks as any other update.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import torch

from fl_ext.attacks import CLIENT_ROLES, ROLE_KEY, OmniscientAttack
from fl_ext.rng_state import restore_rng, rng_state
from fl_ext.validation import check_update_norm, update_norm
from strategies.replies import TrainReply
from strategies.round import Round
from strategies.stage import ConfigValue, Stage


class ByzantineSimulation(Stage):
    """Which nodes are Byzantine (fixed for the run, from ``seed``) and what they do.

    An omniscient attack needs the round's individual updates (it replaces the Byzantine
    rows by crafted ones in ``transform``); a client role needs fl-ext clients (they are
    told their role in the train config).
    """

    name = "byzantine"

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
        self.requires = frozenset({"individual_updates"} if omniscient is not None else ())
        self.needs_fl_ext_client = client_role is not None

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        self.designate(nodes)  # once, from the first round's eligible nodes
        return nodes

    def node_entries(self, rnd: Round, node: int) -> dict[str, ConfigValue]:
        return dict(self.config_for(node))

    def transform(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> tuple[torch.Tensor, list[TrainReply]]:
        """Replace the Byzantine rows by crafted updates, then check those like any reply."""
        byz = [i for i, r in enumerate(accepted) if self.is_byzantine(r.node_id)]
        honest = [i for i, r in enumerate(accepted) if not self.is_byzantine(r.node_id)]
        rnd.log.byzantine = len(byz)
        if self.omniscient is None or not byz or not honest:
            return updates, accepted
        if rnd.preview is not None:
            self.omniscient.bind(rnd.preview)
        crafted = self.craft(updates[honest], len(byz))
        keep = list(honest)
        for row, i in zip(crafted, byz, strict=True):
            updates[i] = row
            finite = bool(torch.isfinite(row).all())
            rejection = check_update_norm(
                update_norm(row) if finite else float("nan"), rnd.max_update_norm
            )
            if rejection:
                rnd.reject(accepted[i].node_id, rejection)
            else:
                keep.append(i)
        keep.sort()
        return updates[keep], [accepted[i] for i in keep]

    def summary(self) -> str:
        what = type(self.omniscient).__name__ if self.omniscient else self.client_role
        return f"simulated attack: {self.num_byzantine} Byzantine nodes, {what}"

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

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        restore_rng(self._generator, state["generator"])

    def craft(self, honest: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` crafted updates from the honest ones (omniscient attacks only)."""
        if self.omniscient is None:
            raise ValueError("no omniscient attack configured")
        return self.omniscient(honest, count, self._generator)
