"""Build the strategy's compression from the ``codec`` config group (checked at start).

The group's ``_target_`` names the factory: :func:`compression` (one uplink codec for every
node: ``codec=int8``, ``codec=topk_int8``, ...), :func:`adaptive_compression` (per-node tiers:
``codec=adaptive``), or null (``codec=none``: full float32 weights both ways). The group's
other keys are the factory's keyword arguments; the experiment's seed comes at the call.
Codec specs inside the group are built through the ``fl_ext`` allowlist, as clients build them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fl_ext.codecs import BlockQuant, Cast, Codec
from fl_ext.specs import build_from_spec
from simulations.group_build import build_group
from strategies.compression import AdaptiveCompression, Compression, Tier

DOWNLINKS: dict[str, Codec | None] = {
    "none": None,
    "float16": Cast(dtype="float16"),
    "bfloat16": Cast(dtype="bfloat16"),
    "int8": BlockQuant(bits=8),
}
# auto: the network group's simulated uplink when one is configured, else a draw from
# profiles_mbps; network: the network group's (required); simulated: always the draw
BANDWIDTH_SOURCES = ("auto", "network", "simulated")
ADAPTIVE_KEYS = ("bandwidth", "profiles_mbps", "tiers")
TIER_KEYS = ("max_mbps", "local_epochs", "uplink")


def build_compression(conf: dict[str, Any]) -> Compression | None:
    """What ``codec._target_`` builds, or None for ``codec=none``; ValueError if bad."""
    return build_group("codec", conf, Compression, int(conf["seed"]))


def _downlink(name: Any) -> Codec | None:
    if not isinstance(name, str) or name not in DOWNLINKS:
        raise ValueError(f"codec.downlink {name!r} is not one of {', '.join(DOWNLINKS)}")
    return DOWNLINKS[name]


def _codec(spec: Any, key: str) -> Codec:
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise ValueError(
            f"{key} must be a codec spec ({{_target_: fl_ext.codecs.<Codec>, ...}}), got "
            f"{spec!r}; for no compression use codec=none"
        )
    return build_from_spec(spec, Codec)


def compression(
    seed: int, /, *, uplink: Mapping[str, Any], downlink: str, error_feedback: bool
) -> Compression:
    """One uplink codec for every node, an optional downlink codec, error feedback."""
    return Compression(
        uplink=_codec(uplink, "codec.uplink"),
        downlink=_downlink(downlink),
        error_feedback=bool(error_feedback),
        seed=seed,
    )


def adaptive_compression(
    seed: int, /, *, adaptive: Mapping[str, Any], downlink: str, error_feedback: bool
) -> AdaptiveCompression:
    """Per-node codec and local epochs from the node's uplink bandwidth (``codec.adaptive``)."""
    a = dict(adaptive)
    for key in a:
        if key not in ADAPTIVE_KEYS:
            raise ValueError(
                f"codec.adaptive.{key} is not a setting of the adaptive codec; its settings: "
                f"{', '.join(ADAPTIVE_KEYS)}"
            )
    if a.get("bandwidth", "auto") not in BANDWIDTH_SOURCES:
        raise ValueError(
            f"codec.adaptive.bandwidth {a.get('bandwidth')!r} is not one of "
            f"{', '.join(BANDWIDTH_SOURCES)}"
        )
    return AdaptiveCompression(
        tiers=_tiers(a.get("tiers") or []),
        profiles_mbps=list(a.get("profiles_mbps") or []),
        downlink=_downlink(downlink),
        error_feedback=bool(error_feedback),
        seed=seed,
    )


def _tiers(raw_tiers: Sequence[Any]) -> list[Tier]:
    tiers = []
    for i, raw in enumerate(raw_tiers):
        where = f"codec.adaptive.tiers[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where} must be a mapping with {', '.join(TIER_KEYS)}, got {raw!r}")
        t = dict(raw)
        unknown = sorted(set(t) - set(TIER_KEYS))
        if unknown:
            raise ValueError(f"{where}.{unknown[0]} is not one of {', '.join(TIER_KEYS)}")
        if "uplink" not in t:
            raise ValueError(f"{where} needs an uplink codec spec")
        epochs = t.get("local_epochs")
        if epochs is not None and (
            isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
        ):
            raise ValueError(f"{where}.local_epochs must be >= 1, got {epochs}")
        tiers.append(Tier(t.get("max_mbps"), _codec(t["uplink"], f"{where}.uplink"), epochs))
    return tiers
