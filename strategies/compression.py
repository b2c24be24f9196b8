"""The strategy's side of compression: which codecs the clients use, the compressed broadcast.

The uplink codec's spec travels in every train message, so a client encodes with exactly the
codec the server decodes with (and builds it through the ``fl_ext`` allowlist); the server
checks every payload against that codec and rejects a bad one like any other bad reply.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from fl_ext.codecs import Codec
from fl_ext.params import ParamSpec
from fl_ext.specs import spec_to_json
from strategies.records import payload_record, record_to_named


class Compression:
    """Uplink codec (client updates), optional downlink codec (global model), error feedback."""

    def __init__(
        self,
        *,
        uplink: Codec,
        downlink: Codec | None = None,
        error_feedback: bool = False,
        seed: int = 0,
    ) -> None:
        for name, codec in (("uplink", uplink), ("downlink", downlink)):
            if codec is not None and not isinstance(codec, Codec):
                raise ValueError(f"codec.{name} must be a Codec, got {type(codec).__name__}")
        self.uplink, self.downlink = uplink, downlink
        self.error_feedback = bool(error_feedback)
        self.seed = int(seed)

    def train_entries(self, server_round: int) -> dict[str, Any]:
        entries: dict[str, Any] = {
            "codec-up": spec_to_json(self.uplink.spec()),
            "codec-ef": self.error_feedback,
            "codec-seed": self.seed * 1_000_003 + server_round,
        }
        if self.downlink is not None:
            entries["codec-down"] = spec_to_json(self.downlink.spec())
        return entries

    def broadcast(self, arrays: ArrayRecord, server_round: int) -> ArrayRecord:
        """The global model as sent: the downlink codec's payload, or as is."""
        if self.downlink is None:
            return arrays
        named = record_to_named(arrays)
        flat = ParamSpec.of(named).flatten(named).numpy()
        rng = np.random.default_rng([self.seed, server_round])
        return payload_record(self.downlink.encode(flat, rng))

    def describe(self) -> str:
        down = f", downlink {self.downlink!r}" if self.downlink is not None else ""
        ef = " with error feedback" if self.error_feedback else ""
        return f"uplink {self.uplink!r}{ef}{down}"
