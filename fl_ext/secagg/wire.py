"""What both sides of SecAgg+ agree on byte for byte: round parameters, labels, packed tables.

Every key derivation and every sealed share is bound to the round's random nonce and to the
sender and receiver ids, so a share replayed from another round, or routed to another
client, fails authentication instead of being used.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fl_ext.secagg import shamir
from fl_ext.secagg.keys import SecAggError
from fl_ext.secagg.prg import word_dtype

DOMAIN = b"fl-ext/secagg+/v1"
KEY_BYTES = 32
NONCE_BYTES = 16
SHARE = 2 + shamir.SHARE_BYTES  # x (2 bytes) then y
_PARAMS = struct.Struct(">Q16sHBI")  # round, nonce, threshold, bits, size
_KEY_ROW = 8 + 2 * KEY_BYTES
_SHARE_ROW = 8 + 2 + 2 * shamir.SHARE_BYTES
MAX_NODE = (1 << 64) - 1


@dataclass(frozen=True)
class RoundParams:
    """The parameters every client of one round uses (sent in the key phase)."""

    round: int
    nonce: bytes
    threshold: int
    bits: int
    size: int  # words per masked vector

    def __post_init__(self) -> None:
        if len(self.nonce) != NONCE_BYTES:
            raise SecAggError(f"round nonce must be {NONCE_BYTES} bytes, got {len(self.nonce)}")
        if not 1 <= self.threshold <= 0xFFFF:
            raise SecAggError(f"threshold must be in [1, 65535], got {self.threshold}")
        if not 2 <= self.bits <= 32:
            raise SecAggError(f"bits must be in [2, 32], got {self.bits}")
        if not 1 <= self.size < 1 << 32:
            raise SecAggError(f"vector size must be in [1, 2^32), got {self.size}")
        if not 0 <= self.round < 1 << 64:
            raise SecAggError(f"round must be in [0, 2^64), got {self.round}")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(word_dtype(self.bits))

    @property
    def modulus_mask(self) -> int:
        return (1 << self.bits) - 1

    def to_bytes(self) -> bytes:
        return _PARAMS.pack(self.round, self.nonce, self.threshold, self.bits, self.size)

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundParams:
        if len(data) != _PARAMS.size:
            raise SecAggError(f"round parameters must be {_PARAMS.size} bytes, got {len(data)}")
        return cls(*_PARAMS.unpack(data))


def node_bytes(node: int) -> bytes:
    """A node id as 8 big-endian bytes (Flower ids are unsigned 64-bit)."""
    if not 0 <= node <= MAX_NODE:
        raise SecAggError(f"node id {node} is not an unsigned 64-bit integer")
    return node.to_bytes(8, "big")


def seal_info(params: RoundParams) -> bytes:
    """HKDF label of the keys that seal shares (distinct from the masks' label)."""
    return DOMAIN + b"/seal/" + params.to_bytes()


def mask_info(params: RoundParams) -> bytes:
    """HKDF label of the pairwise mask seeds."""
    return DOMAIN + b"/mask/" + params.to_bytes()


def aad(params: RoundParams, sender: int, receiver: int) -> bytes:
    """Associated data of one sealed share: the round, who sealed it, for whom."""
    return DOMAIN + params.to_bytes() + node_bytes(sender) + node_bytes(receiver)


def commitment(params: RoundParams, node: int, seed: bytes) -> bytes:
    """SHA-256 binding a self-mask seed to its node and round (checks a reconstruction)."""
    return hashlib.sha256(
        DOMAIN + b"/commit/" + params.to_bytes() + node_bytes(node) + seed
    ).digest()


def mask_sign(own: int, peer: int) -> int:
    """+1 for the smaller id of a pair, -1 for the larger: the pair's masks cancel."""
    return 1 if own < peer else -1


def share_bytes(x: int, y: int) -> bytes:
    """One share as ``x`` (2 bytes) then ``y``."""
    return x.to_bytes(2, "big") + shamir.share_to_bytes(y)


def parse_share(data: bytes) -> tuple[int, int]:
    """Inverse of :func:`share_bytes`, checked (it comes from a client)."""
    if len(data) != SHARE:
        raise SecAggError(f"a share is {SHARE} bytes, got {len(data)}")
    x = int.from_bytes(data[:2], "big")
    if x < 1:
        raise SecAggError("a share's x coordinate must be >= 1")
    try:
        return x, shamir.share_from_bytes(data[2:])
    except ValueError as err:
        raise SecAggError(f"bad share value: {err}") from None


def pack_keys(table: Mapping[int, tuple[bytes, bytes]]) -> bytes:
    """``{node: (enc pk, mask pk)}`` as rows of id + two keys."""
    return b"".join(node_bytes(n) + e + m for n, (e, m) in sorted(table.items()))


def unpack_keys(data: bytes) -> dict[int, tuple[bytes, bytes]]:
    """Inverse of :func:`pack_keys`, checked."""
    if len(data) % _KEY_ROW:
        raise SecAggError(f"a key table is rows of {_KEY_ROW} bytes, got {len(data)} bytes")
    out: dict[int, tuple[bytes, bytes]] = {}
    for i in range(0, len(data), _KEY_ROW):
        node = int.from_bytes(data[i : i + 8], "big")
        if node in out:
            raise SecAggError(f"node {node} appears twice in the key table")
        out[node] = (data[i + 8 : i + 40], data[i + 40 : i + 72])
    return out


def pack_shares(table: Mapping[int, tuple[int, int, int]]) -> bytes:
    """``{node: (x, seed share, key share)}`` as rows."""
    return b"".join(
        node_bytes(n) + x.to_bytes(2, "big") + shamir.share_to_bytes(a) + shamir.share_to_bytes(b)
        for n, (x, a, b) in sorted(table.items())
    )


def unpack_shares(data: bytes) -> dict[int, tuple[int, int, int]]:
    """Inverse of :func:`pack_shares`."""
    if len(data) % _SHARE_ROW:
        raise SecAggError(f"a share table is rows of {_SHARE_ROW} bytes, got {len(data)} bytes")
    out: dict[int, tuple[int, int, int]] = {}
    s = shamir.SHARE_BYTES
    for i in range(0, len(data), _SHARE_ROW):
        row = data[i : i + _SHARE_ROW]
        out[int.from_bytes(row[:8], "big")] = (
            int.from_bytes(row[8:10], "big"),
            shamir.share_from_bytes(row[10 : 10 + s]),
            shamir.share_from_bytes(row[10 + s :]),
        )
    return out


def pack_table(table: Mapping[int, bytes], width: int) -> bytes:
    """``{node: value}`` with values of ``width`` bytes, as rows of id + value."""
    out = []
    for node, value in sorted(table.items()):
        if len(value) != width:
            raise SecAggError(f"value for node {node} is {len(value)} bytes, not {width}")
        out.append(node_bytes(node) + value)
    return b"".join(out)


def unpack_table(data: bytes, width: int) -> dict[int, bytes]:
    """Inverse of :func:`pack_table`, checked (duplicates and ragged rows refused)."""
    row = 8 + width
    if len(data) % row:
        raise SecAggError(f"a table is rows of {row} bytes, got {len(data)} bytes")
    out: dict[int, bytes] = {}
    for i in range(0, len(data), row):
        node = int.from_bytes(data[i : i + 8], "big")
        if node in out:
            raise SecAggError(f"node {node} appears twice in the table")
        out[node] = data[i + 8 : i + row]
    return out


def pack_ids(nodes: Sequence[int]) -> bytes:
    """Node ids as 8-byte rows."""
    return b"".join(node_bytes(n) for n in nodes)


def unpack_ids(data: bytes) -> list[int]:
    """Inverse of :func:`pack_ids`, checked."""
    if len(data) % 8:
        raise SecAggError(f"an id list is rows of 8 bytes, got {len(data)} bytes")
    ids = [int.from_bytes(data[i : i + 8], "big") for i in range(0, len(data), 8)]
    if len(set(ids)) != len(ids):
        raise SecAggError("an id list names a node twice")
    return ids
