"""Build the simulated attack from the ``attack`` config group (simulation only).

The group's ``_target_`` names the factory: :func:`byzantine` (``attack=alie``,
``attack=label_flip``, ...: ``num_byzantine`` nodes chosen from the run's seed, an
``omniscient`` attack the server crafts or a ``client_role`` the clients play), or null
(``attack=none``). The group's other keys are the factory's keyword arguments; the experiment's
seed comes at the call. The omniscient attack spec is built through the ``fl_ext`` allowlist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_ext.attacks import OmniscientAttack
from fl_ext.specs import build_from_spec
from simulations.group_build import build_group
from strategies.byzantine import ByzantineSimulation


def build_attack(conf: dict[str, Any]) -> ByzantineSimulation | None:
    """The attack ``attack._target_`` builds; None for ``attack=none`` or no Byzantine node.

    With ``attack.num_byzantine=0`` there is nothing to simulate (no node is designated).
    ValueError if the group is bad.
    """
    built = build_group("attack", conf, ByzantineSimulation, int(conf["seed"]))
    return built if built is not None and built.num_byzantine > 0 else None


def byzantine(
    seed: int,
    /,
    *,
    num_byzantine: int,
    omniscient: Mapping[str, Any] | None,
    client_role: str | None,
) -> ByzantineSimulation:
    """``num_byzantine`` nodes (fixed for the run, from ``seed``) that attack one way."""
    if omniscient is not None and (
        not isinstance(omniscient, Mapping) or "_target_" not in omniscient
    ):
        raise ValueError(
            "attack.omniscient must be an attack spec ({_target_: fl_ext.attacks.<Attack>, "
            f"...}}) or null, got {omniscient!r}"
        )
    return ByzantineSimulation(
        num_byzantine=num_byzantine,
        omniscient=None if omniscient is None else build_from_spec(omniscient, OmniscientAttack),
        client_role=client_role,
        seed=seed,
    )
