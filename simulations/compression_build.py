"""Build the strategy's compression from the ``codec`` config group (checked at start)."""

from __future__ import annotations

from typing import Any

from fl_ext.codecs import BlockQuant, Cast, Codec, Identity
from fl_ext.specs import build_from_spec
from strategies.compression import AdaptiveCompression, Compression, Tier

DOWNLINKS: dict[str, Codec | None] = {
    "none": None,
    "float16": Cast(dtype="float16"),
    "bfloat16": Cast(dtype="bfloat16"),
    "int8": BlockQuant(bits=8),
}


def build_compression(conf: dict[str, Any]) -> Compression | None:
    """None for ``codec=none`` (full float32 weights both ways)."""
    c = dict(conf.get("codec") or {})
    downlink = str(c.get("downlink", "none"))
    if downlink not in DOWNLINKS:
        raise ValueError(f"codec.downlink {downlink!r} is not one of {', '.join(DOWNLINKS)}")
    adaptive = c.get("adaptive")
    if adaptive:
        return _adaptive(dict(adaptive), c, DOWNLINKS[downlink], int(conf["seed"]))
    spec = c.get("uplink")
    if spec is None and downlink == "none":
        return None
    uplink = Identity() if spec is None else build_from_spec(spec, Codec)
    return Compression(
        uplink=uplink,
        downlink=DOWNLINKS[downlink],
        error_feedback=bool(c.get("error_feedback", False)),
        seed=int(conf["seed"]),
    )


# auto: the network group's simulated uplink when one is configured, else a draw from
# profiles_mbps; network: the network group's (required); simulated: always the draw
BANDWIDTH_SOURCES = ("auto", "network", "simulated")


def _adaptive(
    a: dict[str, Any], c: dict[str, Any], downlink: Codec | None, seed: int
) -> AdaptiveCompression:
    if a.get("bandwidth", "auto") not in BANDWIDTH_SOURCES:
        raise ValueError(
            f"codec.adaptive.bandwidth {a.get('bandwidth')!r} is not one of "
            f"{', '.join(BANDWIDTH_SOURCES)}"
        )
    tiers = []
    for i, raw in enumerate(a.get("tiers") or []):
        t = dict(raw)
        if "uplink" not in t:
            raise ValueError(f"codec.adaptive.tiers[{i}] needs an uplink codec spec")
        epochs = t.get("local_epochs")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ValueError(f"codec.adaptive.tiers[{i}].local_epochs must be >= 1, got {epochs}")
        tiers.append(Tier(t.get("max_mbps"), build_from_spec(t["uplink"], Codec), epochs))
    return AdaptiveCompression(
        tiers=tiers,
        profiles_mbps=list(a.get("profiles_mbps") or []),
        downlink=downlink,
        error_feedback=bool(c.get("error_feedback", False)),
        seed=seed,
    )
