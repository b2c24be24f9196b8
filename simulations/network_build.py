"""Build the round policy (clock, deadlines, over-selection) from the ``network`` config group.

The group's ``_target_`` names the factory: :func:`simulated` (simulated devices and links on
a virtual clock: ``network=ideal|mobile|mixed``, whose ``profile`` names the
:class:`~fl_ext.selection.network.SimulatedNetwork` profile), :func:`measured` (the same rules
on measured reply times: ``network=measured``), or null (``network=none``: every node online,
no deadline, no clock). The group's other keys are the factory's keyword arguments; the
experiment's seed comes at the call.
"""

from __future__ import annotations

from typing import Any

from fl_ext.selection.network import PROFILES, SimulatedNetwork
from simulations.group_build import build_group
from strategies.stragglers import MeasuredStragglers, RoundPolicy, StragglerPolicy

# the straggler rules both clocks take (RoundPolicy's keyword parameters)
RULES = (
    "over_selection",
    "deadline_s",
    "deadline_percentile",
    "partial_fraction",
    "fallback_fraction",
)


def build_network(conf: dict[str, Any]) -> RoundPolicy | None:
    """The policy ``network._target_`` builds, or None for ``network=none``; ValueError if bad."""
    return build_group("network", conf, RoundPolicy, int(conf["seed"]))


def _number(key: str, value: Any, *, allow_none: bool) -> Any:
    """``value``, checked to be a number (or null where ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        allowed = "a number or null" if allow_none else "a number"
        raise ValueError(f"network.{key} must be {allowed}, got {value!r}")
    return value


def _rules(
    over_selection: Any,
    deadline_s: Any,
    deadline_percentile: Any,
    partial_fraction: Any,
    fallback_fraction: Any,
) -> dict[str, Any]:
    """The straggler rules with their types checked (their ranges: the policy's own checks)."""
    values = (over_selection, deadline_s, deadline_percentile, partial_fraction, fallback_fraction)
    nullable = ("deadline_s", "deadline_percentile")
    return {
        key: _number(key, value, allow_none=key in nullable)
        for key, value in zip(RULES, values, strict=True)
    }


def _named(err: ValueError) -> ValueError:
    """The policy's own message (``over_selection must be >= 1, ...``) under ``network.``."""
    text = str(err)
    return ValueError(f"network.{text}" if text.split(" ", 1)[0] in RULES else f"network: {text}")


def simulated(
    seed: int,
    /,
    *,
    profile: str,
    diurnal: bool,
    period_rounds: int,
    over_selection: float,
    deadline_s: float | None,
    deadline_percentile: float | None,
    partial_fraction: float,
    fallback_fraction: float,
    seconds_per_example: float | None,
) -> StragglerPolicy:
    """Simulated devices and links of ``profile`` on a virtual clock (seeded by the run)."""
    if profile not in PROFILES:
        raise ValueError(
            f"network.profile {profile!r} is not one of {', '.join(PROFILES)} (the simulated "
            "profiles; for measured reply times choose network=measured, for none network=none)"
        )
    if not isinstance(diurnal, bool):
        raise ValueError(f"network.diurnal must be true or false, got {diurnal!r}")
    if isinstance(period_rounds, bool) or not isinstance(period_rounds, int) or period_rounds < 1:
        raise ValueError(f"network.period_rounds must be an integer >= 1, got {period_rounds!r}")
    rules = _rules(
        over_selection, deadline_s, deadline_percentile, partial_fraction, fallback_fraction
    )
    per_example = _number("seconds_per_example", seconds_per_example, allow_none=True)
    if per_example is not None and not per_example > 0:
        raise ValueError(f"network.seconds_per_example must be > 0 or null, got {per_example}")
    network = SimulatedNetwork(
        profile=profile, seed=seed, diurnal=diurnal, period_rounds=period_rounds
    )
    try:
        return StragglerPolicy(network=network, seconds_per_example=per_example, **rules)
    except ValueError as err:
        raise _named(err) from err


def measured(
    seed: int,
    /,
    *,
    over_selection: float,
    deadline_s: float | None,
    deadline_percentile: float | None,
    partial_fraction: float,
    fallback_fraction: float,
) -> MeasuredStragglers:
    """The same straggler rules on measured reply times (wall seconds, push to pull)."""
    del seed  # nothing is drawn: the times are measured
    rules = _rules(
        over_selection, deadline_s, deadline_percentile, partial_fraction, fallback_fraction
    )
    try:
        return MeasuredStragglers(**rules)
    except ValueError as err:
        raise _named(err) from err
