"""One client's side of one SecAgg+ round (Bell et al. 2020; Bonawitz et al. 2017), no transport.

Phases, each a method the client's message handler calls with what the server sent:

1. :meth:`ClientSession.advertise`: fresh X25519 key pairs (one to encrypt shares, one to
   agree masks) and a fresh 256-bit self-mask seed, every round;
2. :meth:`ClientSession.share`: Shamir ``t``-of-``k`` shares of the self-mask seed and of the
   masking secret key, one pair per neighbour, sealed with ChaCha20-Poly1305 under a key
   agreed with that neighbour (the server only routes them), and a commitment to the seed;
3. :meth:`ClientSession.masked`: the neighbours' shares opened and kept; the encoded update
   plus the self mask plus one pairwise mask per live neighbour (signs cancel in the sum);
4. :meth:`ClientSession.unmask`: the self-mask share of every neighbour the server says
   survived, the key share of every one it says dropped; never both for one peer, and only
   once per round. With a threshold above half the neighbourhood (checked in phase 2) this
   stops a server from unmasking one client's input: it would need ``t`` seed shares and
   ``t`` key shares from ``2t > k`` holders, so one holder would have to give both. A server
   that also tells different holders different survivor sets is out of this model (Bonawitz
   et al.'s consistency round with signatures is not implemented).

The session is kept between messages as bytes (:meth:`to_state` / :meth:`from_state`), since a
ClientApp may be a new process for every message. Every input is checked; a violation is a
:class:`~fl_ext.secagg.keys.SecAggError` naming it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fl_ext.secagg import keys, shamir
from fl_ext.secagg.keys import SecAggError
from fl_ext.secagg.prg import add_mask
from fl_ext.secagg.wire import (
    KEY_BYTES,
    RoundParams,
    aad,
    commitment,
    mask_info,
    mask_sign,
    node_bytes,
    pack_keys,
    pack_shares,
    seal_info,
    share_bytes,
    unpack_keys,
    unpack_shares,
)

PHASES = ("advertised", "shared", "masked", "done")
_PLAIN = 8 + 8 + 2 + 2 * shamir.SHARE_BYTES  # sender, receiver, x, seed share, key share


@dataclass
class ClientSession:
    """A client's secrets and what it learnt, for one round."""

    node: int
    params: RoundParams
    enc: keys.KeyPair
    mask: keys.KeyPair
    seed: bytes
    phase: str = "advertised"
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # id -> (enc, mask) pk
    held: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # id -> (x, y_seed, y_sk)
    # id -> (seal key, pairwise mask seed), agreed in the share phase so masking only expands
    links: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)

    @classmethod
    def start(cls, node: int, params: RoundParams) -> ClientSession:
        """Fresh keys and seed for this round (nothing is reused across rounds)."""
        return cls(
            node=node,
            params=params,
            enc=keys.generate_keypair(),
            mask=keys.generate_keypair(),
            seed=secrets.token_bytes(32),
        )

    def advertise(self) -> tuple[bytes, bytes]:
        """The two public keys the server forwards to the neighbours."""
        return self.enc.public, self.mask.public

    # ---------------------------------------------------------------- phase 2
    def share(
        self, neighbours: Mapping[int, tuple[bytes, bytes]]
    ) -> tuple[dict[int, bytes], bytes]:
        """Sealed shares for each neighbour, and the commitment to the self-mask seed."""
        self._expect("advertised")
        t = self.params.threshold
        if self.node in neighbours:
            raise SecAggError(f"node {self.node} is listed as its own neighbour")
        if len(neighbours) < t:
            raise SecAggError(
                f"{len(neighbours)} neighbours cannot hold a {t}-of-{len(neighbours)} sharing"
            )
        if 2 * t <= len(neighbours):
            raise SecAggError(
                f"threshold {t} of {len(neighbours)} neighbours is not a majority: a server could "
                "collect both secrets from disjoint holders; refused"
            )
        seen = {self.enc.public, self.mask.public}
        for peer, (enc_pk, mask_pk) in neighbours.items():
            if len(enc_pk) != KEY_BYTES or len(mask_pk) != KEY_BYTES:
                raise SecAggError(f"neighbour {peer}'s public keys are not {KEY_BYTES} bytes")
            if enc_pk in seen or mask_pk in seen or enc_pk == mask_pk:
                raise SecAggError(f"neighbour {peer}'s public key repeats another key of the round")
            seen.update((enc_pk, mask_pk))
        order = sorted(neighbours)
        xs = list(range(1, len(order) + 1))
        seed_shares = shamir.split(self.seed, threshold=t, xs=xs)
        key_shares = shamir.split(self.mask.private, threshold=t, xs=xs)
        sealed: dict[int, bytes] = {}
        links: dict[int, tuple[bytes, bytes]] = {}
        enc_sk, mask_sk = keys.private_key(self.enc.private), keys.private_key(self.mask.private)
        seal_label, mask_label = seal_info(self.params), mask_info(self.params)
        for peer, x, ys, yk in zip(order, xs, seed_shares, key_shares, strict=True):
            key = keys.agree(enc_sk, neighbours[peer][0], info=seal_label)
            pair = keys.agree(mask_sk, neighbours[peer][1], info=mask_label)
            links[peer] = (key, pair)
            plain = (
                node_bytes(self.node) + node_bytes(peer) + x.to_bytes(2, "big")
                + shamir.share_to_bytes(ys) + shamir.share_to_bytes(yk)
            )  # fmt: skip
            sealed[peer] = keys.seal(key, plain, aad=aad(self.params, self.node, peer))
        self.peers = dict(neighbours)
        self.links = links
        self.phase = "shared"
        return sealed, commitment(self.params, self.node, self.seed)

    # ---------------------------------------------------------------- phase 3
    def masked(self, words: np.ndarray, sealed: Mapping[int, bytes]) -> np.ndarray:
        """``words`` (the encoded update) masked, after opening the live neighbours' shares.

        ``sealed``: the shares addressed to this client by the neighbours that reached the
        share phase; exactly those are the live neighbours it masks with.
        """
        self._expect("shared")
        p = self.params
        if words.shape != (p.size,) or words.dtype != np.dtype(p.dtype):
            raise SecAggError(
                f"encoded update is {words.dtype}{words.shape}, not {p.dtype}({p.size},)"
            )
        unknown = set(sealed) - set(self.peers)
        if unknown:
            raise SecAggError(f"shares from nodes that are not neighbours: {sorted(unknown)}")
        if len(sealed) < p.threshold:
            raise SecAggError(
                f"only {len(sealed)} live neighbours; the round's threshold is {p.threshold}"
            )
        held: dict[int, tuple[int, int, int]] = {}
        for peer, box in sealed.items():
            plain = keys.open_sealed(self.links[peer][0], box, aad=aad(p, peer, self.node))
            if len(plain) != _PLAIN:
                raise SecAggError(f"share from node {peer} has {len(plain)} bytes, not {_PLAIN}")
            if plain[:8] != node_bytes(peer) or plain[8:16] != node_bytes(self.node):
                raise SecAggError(f"share from node {peer} names another sender or receiver")
            x = int.from_bytes(plain[16:18], "big")
            ys = shamir.share_from_bytes(plain[18 : 18 + shamir.SHARE_BYTES])
            yk = shamir.share_from_bytes(plain[18 + shamir.SHARE_BYTES :])
            held[peer] = (x, ys, yk)
        out = np.array(words, dtype=p.dtype, copy=True)
        add_mask(out, self.seed, sign=1)
        for peer in sorted(held):
            add_mask(out, self.links[peer][1], sign=mask_sign(self.node, peer))
        out &= out.dtype.type(p.modulus_mask)
        self.held = held
        self.phase = "masked"
        return out

    # ---------------------------------------------------------------- phase 4
    def unmask(
        self, survivors: Sequence[int], dropped: Sequence[int]
    ) -> tuple[dict[int, bytes], dict[int, bytes]]:
        """Seed shares of ``survivors`` and key shares of ``dropped`` (each ``x || y``).

        Refused: a peer in both lists, a peer it holds no share of, or a second request in
        the same round (two requests could name one peer once in each).
        """
        self._expect("masked")
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggError(
                f"the server asks for both the self-mask and the key share of {sorted(both)}: "
                "that would unmask an individual input; refused"
            )
        unknown = (set(survivors) | set(dropped)) - set(self.held)
        if unknown:
            raise SecAggError(f"no shares held of nodes {sorted(unknown)}")
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise SecAggError("a node is listed twice in the unmask request")
        self.phase = "done"  # one answer per round, whatever follows
        seeds = {n: share_bytes(self.held[n][0], self.held[n][1]) for n in survivors}
        sks = {n: share_bytes(self.held[n][0], self.held[n][2]) for n in dropped}
        return seeds, sks

    def _expect(self, phase: str) -> None:
        if self.phase != phase:
            raise SecAggError(
                f"round {self.params.round} is in phase '{self.phase}', this message belongs "
                f"after '{phase}' (replayed, reordered or repeated)"
            )

    # ---------------------------------------------------------------- storage
    def to_state(self) -> dict[str, bytes | int | str]:
        """Everything :meth:`from_state` needs, as ConfigRecord values."""
        return {
            "node": str(self.node),
            "params": self.params.to_bytes(),
            "enc": self.enc.private,
            "mask": self.mask.private,
            "seed": self.seed,
            "phase": self.phase,
            "peers": pack_keys(self.peers),
            "held": pack_shares(self.held),
            "links": pack_keys(self.links),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> ClientSession:
        """Inverse of :meth:`to_state`."""

        def raw(key: str) -> bytes:
            value = state[key]
            if not isinstance(value, bytes):
                raise SecAggError(f"stored secure-aggregation state: {key!r} is not bytes")
            return value

        try:
            enc, mask = raw("enc"), raw("mask")
            phase = str(state["phase"])
            if phase not in PHASES:
                raise SecAggError(f"stored phase {phase!r} is not one of {PHASES}")
            return cls(
                node=int(str(state["node"])),
                params=RoundParams.from_bytes(raw("params")),
                enc=keys.KeyPair(private=enc, public=keys.public_from_private(enc)),
                mask=keys.KeyPair(private=mask, public=keys.public_from_private(mask)),
                seed=raw("seed"),
                phase=phase,
                peers=unpack_keys(raw("peers")),
                held=unpack_shares(raw("held")),
                links=unpack_keys(raw("links")),
            )
        except KeyError as err:
            raise SecAggError(f"stored secure-aggregation state lacks {err.args[0]!r}") from None
