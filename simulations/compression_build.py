"""Build the strategy's compression from the ``codec`` config group (checked at start)."""

from __future__ import annotations

from typing import Any

from fl_ext.codecs import BlockQuant, Cast, Codec, Identity
from fl_ext.specs import build_from_spec
from strategies.compression import Compression

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
