"""Build secure aggregation from the ``secagg`` group (``none``, ``secagg_plus``, ``secagg_full``).

The group's keys are :class:`strategies.secure_aggregation.SecureAggregation`'s settings, plus
``dp`` (distributed DP: ``{epsilon, delta, l2_clip, ledger_path}``; its ledger persists as the
privacy group's does). What needs the rest of the experiment (the model size, ``num_rounds``,
the seed) comes from it, never from an override.
"""

from __future__ import annotations

from typing import Any

from fl_ext.privacy.ledger import PrivacyLedger
from simulations.privacy_build import _ledger_file
from strategies.secagg_dp import CentralDP, DistributedDP
from strategies.secure_aggregation import SecureAggregation

DP_KEYS = ("mode", "epsilon", "delta", "l2_clip", "ledger_path")
DP_MODES = {"distributed": DistributedDP, "central": CentralDP}


def build_secagg(conf: dict[str, Any], *, size: int) -> SecureAggregation | None:
    """The part ``secagg`` asks for, or None; ValueError naming a bad key."""
    spec = dict(conf.get("secagg") or {})
    target = spec.pop("_target_", None)
    if target is None:
        if spec:
            raise ValueError(f"secagg is off but sets {', '.join(sorted(spec))}: secagg=<option>")
        return None
    if target != "strategies.secure_aggregation.SecureAggregation":
        raise ValueError(
            f"secagg._target_ must be strategies.secure_aggregation.SecureAggregation, got {target}"
        )
    if (conf.get("privacy") or {}).get("_target_"):
        raise ValueError(
            "privacy=... and secagg=... both add noise: under secure aggregation use "
            "secagg.dp={epsilon: ..., delta: ..., l2_clip: ...} (noise added by the clients)"
        )
    dp_spec = spec.pop("dp", None)
    dp = None
    if dp_spec:
        dp_spec = dict(dp_spec)
        unknown = sorted(set(dp_spec) - set(DP_KEYS))
        if unknown:
            raise ValueError(
                f"secagg.dp.{unknown[0]} is not a setting; settings: {', '.join(DP_KEYS)}"
            )
        delta = dp_spec.get("delta", 1e-5)
        mode = dp_spec.get("mode", "distributed")
        if mode not in DP_MODES:
            raise ValueError(f"secagg.dp.mode must be one of {', '.join(DP_MODES)}, got {mode!r}")
        ledger = PrivacyLedger.open(
            _ledger_file(dp_spec.get("ledger_path"), conf),
            accountant="rdp",
            delta=delta,
            target_epsilon=dp_spec.get("epsilon"),
        )
        dp = DP_MODES[mode](
            epsilon=dp_spec.get("epsilon", 0), delta=delta, l2_clip=dp_spec.get("l2_clip", 0),
            ledger=ledger,
        )  # fmt: skip
    try:
        return SecureAggregation(
            **spec, dp=dp, size=size, num_rounds=int(conf["num_rounds"]), seed=int(conf["seed"])
        )
    except TypeError as err:
        raise ValueError(f"secagg: {err}") from err
