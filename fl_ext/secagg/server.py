"""The server's side of one SecAgg+ round: route, prune, and unmask only the sum.

The server holds no secret. It forwards public keys and sealed shares along the neighbour
graph, keeps the masked vectors, and at the end asks each surviving client for the
self-mask shares of the survivors and the key shares of the dropped, reconstructs those
secrets (each checked: a seed against its commitment, a key against its public key), and
removes the masks from the sum. Each ``close_*`` either returns the next phase's requests or
raises :class:`SecAggAbort` with the reason: a round that cannot finish is abandoned before
anything is unmasked (the caller keeps the model unchanged).

Replies are hostile: ``add_*`` returns a reason (and ignores the reply) for a node that was
not asked in this phase, a duplicate, or a reply of the wrong shape.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from fl_ext.secagg import keys, shamir
from fl_ext.secagg.graph import neighbours
from fl_ext.secagg.keys import SecAggError
from fl_ext.secagg.prg import add_mask
from fl_ext.secagg.wire import (
    KEY_BYTES,
    RoundParams,
    commitment,
    mask_info,
    mask_sign,
    parse_share,
)

SEALED_BYTES = 12 + 8 + 8 + 2 + 2 * shamir.SHARE_BYTES + 16  # nonce, plaintext, tag
MAX_SUBSETS = 64  # share subsets tried when a reconstruction fails its check


class SecAggAbort(RuntimeError):
    """The round cannot finish safely; nothing was unmasked."""


@dataclass
class ServerSession:
    """One round's routing tables and collected values (see the module docstring)."""

    params: RoundParams
    nodes: list[int]
    degree: int | None  # None: the full graph (Bonawitz et al. 2017)
    min_survivors: int
    graph_seed: int | None = None
    keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    graph: dict[int, tuple[int, ...]] = field(default_factory=dict)
    sealed: dict[int, dict[int, bytes]] = field(default_factory=dict)
    commitments: dict[int, bytes] = field(default_factory=dict)
    live: dict[int, frozenset[int]] = field(default_factory=dict)
    vectors: dict[int, np.ndarray] = field(default_factory=dict)
    requests: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    seed_points: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    key_points: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    answered: set[int] = field(default_factory=set)
    liars: set[int] = field(default_factory=set)
    # check every share, also those a reconstruction did not need (finds every liar; costs
    # O(shares x threshold) big-integer products, more than the masks at the full graph)
    audit_shares: bool = False
    survivors: dict[str, int] = field(default_factory=dict)  # phase -> nodes that made it

    def __post_init__(self) -> None:
        if len(set(self.nodes)) != len(self.nodes):
            raise ValueError("nodes must be distinct")
        if self.min_survivors < self.params.threshold:
            raise ValueError(
                f"min_survivors={self.min_survivors} is below the threshold {self.params.threshold}"
            )
        self.survivors["selected"] = len(self.nodes)

    # ---------------------------------------------------------------- phase 1
    def add_keys(self, node: int, enc_pk: bytes, mask_pk: bytes) -> str | None:
        """A client's two public keys; a reason if they are refused."""
        if node not in self.nodes or self.graph:
            return "not asked for keys in this round, or the phase has closed"
        if node in self.keys:
            return "duplicate key advertisement"
        if len(enc_pk) != KEY_BYTES or len(mask_pk) != KEY_BYTES or enc_pk == mask_pk:
            return f"public keys must be two distinct {KEY_BYTES}-byte X25519 keys"
        used = {k for pair in self.keys.values() for k in pair}
        if enc_pk in used or mask_pk in used:
            return "public key already advertised by another node (replayed?)"
        self.keys[node] = (enc_pk, mask_pk)
        return None

    def close_keys(self) -> dict[int, dict[int, tuple[bytes, bytes]]]:
        """The neighbour graph over the nodes that advertised; each node's neighbours' keys."""
        u1 = sorted(self.keys)
        self._need(len(u1), "advertised keys")
        degree = None if self.degree is None or self.degree >= len(u1) - 1 else self.degree
        self.graph = neighbours(u1, degree=degree, seed=self.graph_seed)
        k = min(len(v) for v in self.graph.values())
        if k < self.params.threshold:
            raise SecAggAbort(
                f"{len(u1)} nodes advertised keys: neighbourhoods of {k} cannot hold "
                f"{self.params.threshold}-of-{k} shares"
            )
        self.survivors["keys"] = len(u1)
        return {n: {m: self.keys[m] for m in self.graph[n]} for n in u1}

    # ---------------------------------------------------------------- phase 2
    def add_shares(self, node: int, sealed: Mapping[int, bytes], commit: bytes) -> str | None:
        """A client's sealed shares (one per neighbour) and its seed commitment."""
        if node not in self.graph or self.live:
            return "not asked for shares in this round, or the phase has closed"
        if node in self.sealed:
            return "duplicate share message"
        if set(sealed) != set(self.graph[node]):
            return "shares must be addressed to exactly the node's neighbours"
        if any(len(box) != SEALED_BYTES for box in sealed.values()):
            return f"a sealed share must be {SEALED_BYTES} bytes"
        if len(commit) != 32:
            return "the seed commitment must be 32 bytes (SHA-256)"
        self.sealed[node] = dict(sealed)
        self.commitments[node] = commit
        return None

    def close_shares(self) -> dict[int, dict[int, bytes]]:
        """For every node kept: the shares its live neighbours sealed for it.

        A node with fewer than ``threshold`` live neighbours could not be unmasked: it is
        dropped before anyone masks with it (repeated until every neighbourhood holds).
        """
        alive = set(self.sealed)
        while True:
            weak = {
                n for n in alive if len(alive.intersection(self.graph[n])) < self.params.threshold
            }
            if not weak:
                break
            alive -= weak
        self._need(len(alive), "shared keys")
        self.live = {n: frozenset(alive.intersection(self.graph[n])) for n in alive}
        self.survivors["shares"] = len(alive)
        return {n: {m: self.sealed[m][n] for m in self.live[n]} for n in alive}

    # ---------------------------------------------------------------- phase 3
    def expects_masked(self, node: int) -> bool:
        return node in self.live and not self.requests

    def add_masked(self, node: int, words: np.ndarray) -> str | None:
        """A client's masked vector (already unpacked to words)."""
        if not self.expects_masked(node):
            return "not asked for a masked input in this round, or the phase has closed"
        if node in self.vectors:
            return "duplicate masked input"
        p = self.params
        if words.shape != (p.size,) or words.dtype != p.dtype:
            return f"masked input must be {p.dtype}({p.size},), got {words.dtype}{words.shape}"
        self.vectors[node] = words
        return None

    def close_masked(
        self, accepted: set[int] | None = None
    ) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """The unmask request of every survivor: (its surviving, its dropped neighbours).

        ``accepted``: the survivors whose replies also passed the caller's own checks (the
        others count as dropped). Refused before any request if a needed secret could not be
        reconstructed from the survivors.
        """
        u3 = set(self.vectors) if accepted is None else set(self.vectors) & accepted
        self.vectors = {n: v for n, v in self.vectors.items() if n in u3}
        self._need(len(u3), "sent masked inputs")
        t = self.params.threshold
        for n in u3:
            if len(self.live[n] & u3) < t:
                raise SecAggAbort(
                    f"node {n}'s self mask needs {t} surviving neighbours, "
                    f"{len(self.live[n] & u3)} survived"
                )
        for d in set(self.live) - u3:
            if self.live[d] & u3 and len(self.live[d] & u3) < t:
                raise SecAggAbort(
                    f"dropped node {d}'s masks need {t} surviving neighbours, "
                    f"{len(self.live[d] & u3)} survived"
                )
        self.survivors["masked"] = len(u3)
        self.requests = {
            n: (tuple(sorted(self.live[n] & u3)), tuple(sorted(self.live[n] - u3))) for n in u3
        }
        return dict(self.requests)

    # ---------------------------------------------------------------- phase 4
    def add_unmask(
        self, node: int, seeds: Mapping[int, bytes], sks: Mapping[int, bytes]
    ) -> str | None:
        """A survivor's shares, exactly as requested."""
        if node not in self.requests:
            return "not asked to unmask in this round"
        if node in self.answered:
            return "duplicate unmask answer"
        want_seeds, want_sks = self.requests[node]
        if set(seeds) != set(want_seeds) or set(sks) != set(want_sks):
            return "the shares returned are not the ones requested"
        parsed: list[tuple[dict[int, list[tuple[int, int, int]]], int, int]] = []
        try:
            for table, points in ((seeds, self.seed_points), (sks, self.key_points)):
                for owner, data in table.items():
                    x, y = parse_share(data)
                    expected = self._x_of(owner, node)
                    if x != expected:
                        return f"share of node {owner} has x={x}, the holder's is {expected}"
                    parsed.append((points, owner, (x, y, node)))  # type: ignore[arg-type]
        except SecAggError as err:
            return str(err)
        for points, owner, point in parsed:
            points.setdefault(owner, []).append(point)  # type: ignore[arg-type]
        self.answered.add(node)
        return None

    def close_unmask(self) -> np.ndarray:
        """The unmasked sum of the survivors' inputs, mod 2^bits."""
        self.survivors["unmask"] = len(self.answered)
        p = self.params
        total = np.zeros(p.size, dtype=p.dtype)
        for vector in self.vectors.values():
            total += vector
        for n in sorted(self.vectors):
            seed = self._recover(
                n,
                self.seed_points,
                "self-mask seed",
                functools.partial(self._seed_ok, n),
                32,
            )
            add_mask(total, seed, sign=-1)
        for d in sorted(set(self.live) - set(self.vectors)):
            partners = sorted(self.live[d] & set(self.vectors))
            if not partners:
                continue
            sk = self._recover(
                d,
                self.key_points,
                "mask key",
                functools.partial(self._key_ok, d),
                32,
            )
            for s in partners:
                agreed = keys.agree(sk, self.keys[s][1], info=mask_info(p))
                add_mask(total, agreed, sign=-mask_sign(s, d))
        total &= total.dtype.type(p.modulus_mask)
        return total

    # ---------------------------------------------------------------- helpers
    def _seed_ok(self, node: int, seed: bytes) -> bool:
        return commitment(self.params, node, seed) == self.commitments[node]

    def _key_ok(self, node: int, private: bytes) -> bool:
        return keys.public_from_private(private) == self.keys[node][1]

    def _x_of(self, owner: int, holder: int) -> int:
        """The x coordinate ``owner`` gave ``holder``: its rank among owner's neighbours."""
        return self.graph[owner].index(holder) + 1

    def _recover(
        self,
        owner: int,
        table: dict[int, list[tuple[int, int, int]]],
        what: str,
        verify: Callable[[bytes], bool],
        length: int,
    ) -> bytes:
        """The secret from its shares, checked; lying holders found when more than t answer."""
        t = self.params.threshold
        # by x: with no liar every owner's first t are the same x-set (cached weights)
        points = sorted(table.get(owner, []))
        if len(points) < t:
            raise SecAggAbort(f"node {owner}'s {what}: {len(points)} shares, {t} needed")
        xy = [(x, y) for x, y, _ in points]
        for subset in _subsets(len(xy), t):
            chosen = [xy[i] for i in subset]
            try:
                secret = shamir.combine(chosen, threshold=t, length=length)
            except SecAggError:
                continue
            if verify(secret):
                others = [i for i in range(len(xy)) if i not in subset]
                if subset != tuple(range(t)):  # a needed share lied: find every liar
                    audit = True
                else:  # the shares used were honest; the others are looked at only on request
                    audit = self.audit_shares
                if (
                    audit
                    and others
                    and not shamir.consistent(chosen + [xy[i] for i in others], threshold=t)
                ):
                    for i in others:
                        if not shamir.consistent([*chosen, xy[i]], threshold=t):
                            self.liars.add(points[i][2])
                return secret
        raise SecAggAbort(
            f"node {owner}'s {what} cannot be reconstructed: its {len(points)} shares are "
            "inconsistent (a client lied in the unmask phase)"
        )

    def _need(self, count: int, what: str) -> None:
        if count < self.min_survivors:
            raise SecAggAbort(
                f"{count} of {len(self.nodes)} nodes {what}; the round needs "
                f"{self.min_survivors} (threshold {self.params.threshold})"
            )


def _subsets(count: int, t: int) -> Iterator[tuple[int, ...]]:
    """``t``-subsets of ``range(count)``, fewest points left out first (at most MAX_SUBSETS).

    With ``m`` liars among the holders an honest subset comes within ``1 + m + C(m, 2)...``
    tries, whatever order the answers arrived in.
    """
    seen: set[tuple[int, ...]] = set()
    for m in range(count - t + 1):
        for left_out in itertools.combinations(range(count), m):
            subset = tuple(i for i in range(count) if i not in left_out)[:t]
            if subset not in seen:
                seen.add(subset)
                yield subset
                if len(seen) >= MAX_SUBSETS:
                    return


def threshold_for(degree: int, fraction: float) -> int:
    """Shares needed to reconstruct a secret: ``ceil(fraction * degree)``, at least a majority.

    ``t > degree / 2`` is what makes the clients' "never both shares of one peer" rule
    sufficient: to unmask one client a server would need ``t`` seed shares and ``t`` key
    shares from ``2t > degree`` holders, so one holder would have to give both, and it
    refuses.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"threshold fraction must be in (0, 1], got {fraction}")
    return max(degree // 2 + 1, math.ceil(fraction * degree))
