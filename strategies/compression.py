"""The strategy's side of compression: which codecs the clients use, the compressed broadcast.

The uplink codec's spec travels in every train message, so a client encodes with exactly the
codec the server decodes with (and builds it through the ``fl_ext`` allowlist); the server
checks every payload against that codec and rejects a bad one like any other bad reply.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord

from fl_ext.codecs import Codec
from fl_ext.params import ParamSpec
from fl_ext.selection.network import SimulatedNetwork
from fl_ext.specs import spec_to_json
from flwr_records import payload_record, record_to_named
from strategies.decoding import Decoder
from strategies.round import Round
from strategies.stage import ConfigValue


class Compression(Decoder):
    """Uplink codec (client updates), optional downlink codec (global model), error feedback.

    It fills the decoder slot: each reply is checked against, and decoded with, the codec its
    node was told to use.
    """

    name = "compression"
    needs_fl_ext_client = True

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

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        server_round = rnd.number
        entries: dict[str, ConfigValue] = {
            "codec-up": spec_to_json(self.uplink.spec()),
            "codec-ef": self.error_feedback,
            "codec-seed": self.seed * 1_000_003 + server_round,
        }
        if self.downlink is not None:
            entries["codec-down"] = spec_to_json(self.downlink.spec())
        return entries

    def codec_for(self, node: int) -> Codec:
        """The codec ``node`` was told to encode with this round."""
        return self.uplink

    def broadcast(self, rnd: Round, arrays: ArrayRecord) -> ArrayRecord:
        """The global model as sent: the downlink codec's payload, or as is."""
        server_round = rnd.number
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

    def summary(self) -> str:
        return f"compression: {self.describe()}"


@dataclass(frozen=True)
class Tier:
    """Nodes with uplink bandwidth <= ``max_mbps`` (None: any) use this codec and local epochs."""

    max_mbps: float | None
    uplink: Codec
    local_epochs: int | None = None


class AdaptiveCompression(Compression):
    """Codec strength and local epochs per node from its uplink bandwidth.

    Slow links compress harder (and may train fewer epochs so they are not left behind).

    Bandwidth is simulated: the uplink of the node in the simulated network when the strategy
    has one (:meth:`follow_network`), else one of ``profiles_mbps`` drawn per node (seeded,
    fixed for the run). The round's simulated upload time of a node is its reply bytes /
    bandwidth; the slowest one is reported (``sim_upload_s_max``) so policies can be compared.
    """

    def __init__(
        self,
        *,
        tiers: Sequence[Tier],
        profiles_mbps: Sequence[float],
        downlink: Codec | None = None,
        error_feedback: bool = False,
        seed: int = 0,
    ) -> None:
        tiers = list(tiers)
        if not tiers or tiers[-1].max_mbps is not None:
            raise ValueError("adaptive tiers must end with a catch-all tier (max_mbps: null)")
        bounds = [t.max_mbps for t in tiers[:-1]]
        finite = [b for b in bounds if b is not None]
        if len(finite) < len(bounds) or any(b <= 0 for b in finite) or finite != sorted(finite):
            raise ValueError(f"tier max_mbps must be > 0 and increasing, got {bounds}")
        if not profiles_mbps or any(not (p > 0) for p in profiles_mbps):
            raise ValueError(f"profiles_mbps must be positive bandwidths, got {profiles_mbps}")
        super().__init__(
            uplink=tiers[-1].uplink, downlink=downlink, error_feedback=error_feedback, seed=seed
        )
        self.tiers = tiers
        self.profiles = [float(p) for p in profiles_mbps]
        self._bandwidth: dict[int, float] = {}
        self._assigned: dict[int, Tier] = {}
        self._upload_s: list[float] = []
        self._network: SimulatedNetwork | None = None

    def follow_network(self, network: SimulatedNetwork) -> None:
        """Take each node's uplink bandwidth from the simulated network (one truth per node)."""
        self._network = network
        self._bandwidth = {}

    def bandwidth(self, node: int) -> float:
        """The node's uplink bandwidth in Mbit/s: the network's, else drawn once (seeded)."""
        if self._network is not None:
            return self._network.node(node).up_mbps
        if node not in self._bandwidth:
            rng = np.random.default_rng([self.seed, node & 0xFFFFFFFF, node >> 32])
            self._bandwidth[node] = self.profiles[int(rng.integers(len(self.profiles)))]
        return self._bandwidth[node]

    def tier(self, node: int) -> Tier:
        mbps = self.bandwidth(node)
        return next(t for t in self.tiers if t.max_mbps is None or mbps <= t.max_mbps)

    def node_entries(self, rnd: Round, node: int) -> dict[str, ConfigValue]:
        tier = self.tier(node)
        self._assigned[node] = tier
        entries: dict[str, ConfigValue] = {"codec-up": spec_to_json(tier.uplink.spec())}
        if tier.local_epochs is not None:
            entries["local-epochs"] = int(tier.local_epochs)
        return entries

    def codec_for(self, node: int) -> Codec:
        tier = self._assigned.get(node)
        return tier.uplink if tier is not None else self.uplink

    def on_replies(self, rnd: Round) -> None:
        """Simulated upload time of every reply that reached the server."""
        for msg in rnd.arrived:
            nbytes = rnd.reply_bytes.get(id(msg))
            if nbytes is not None:
                bandwidth = self.bandwidth(msg.metadata.src_node_id)
                self._upload_s.append(nbytes * 8 / (bandwidth * 1e6))

    def metrics(self, rnd: Round) -> dict[str, float]:
        out = {
            f"clients_tier{i}": float(sum(t is tier for t in self._assigned.values()))
            for i, tier in enumerate(self.tiers)
        }
        if self._upload_s:
            out["sim_upload_s_max"] = max(self._upload_s)
            out["sim_upload_s_median"] = float(np.median(self._upload_s))
        self._assigned, self._upload_s = {}, []
        return out
