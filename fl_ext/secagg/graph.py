"""Neighbour graphs for SecAgg (complete graph) and SecAgg+ (sparse Harary graph).

SecAgg+ (Bell et al. 2020) masks each pair of neighbours only, so a client's work grows with
its degree k = O(log n) instead of n. The graph is a Harary graph H(k, n) laid on a random
permutation of the clients: the server cannot choose who neighbours whom ahead of the round
beyond what the shared permutation seed allows.
"""

from __future__ import annotations

import math
import random
import secrets
from collections.abc import Sequence


def default_degree(n: int) -> int:
    """``min(n - 1, 2 * ceil(1.5 * log2 n))``, at least 1: an even O(log n) degree.

    Bell et al. 2020 show a degree of order log n keeps the failure probability (a disconnected
    honest subgraph after dropouts) negligible; the constant 1.5 per side errs on the safe side
    (n = 100 -> 20, n = 1000 -> 30, n = 10^4 -> 40). For n <= 2 this is the full graph.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return max(1, min(n - 1, 2 * math.ceil(1.5 * math.log2(n))))


def neighbours(
    nodes: Sequence[int], *, degree: int | None, seed: int | None = None
) -> dict[int, tuple[int, ...]]:
    """Each node's neighbours (sorted tuples; symmetric, no self-loops).

    ``degree`` None, or ``degree >= n - 1``: the full graph (SecAgg). Otherwise the Harary graph
    H(k, n) on a random permutation of ``nodes``: each node joins the k // 2 nearest on either
    side of the ring and, for odd k with even n, the opposite node. Odd k with odd n has no
    k-regular graph, so k + 1 is used. The permutation comes from ``random.Random(seed)`` when
    a seed is given (all parties derive the same graph) and from the OS CSPRNG otherwise.
    """
    ids = list(nodes)
    for v in ids:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"node ids must be ints, got {v!r}")
    if len(set(ids)) != len(ids):
        raise ValueError(f"node ids must be distinct, got {len(ids) - len(set(ids))} duplicates")
    n = len(ids)
    if degree is not None:
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree={degree!r} must be None or an int >= 1 (n={n})")
    if degree is None or degree >= n - 1:
        return {v: tuple(sorted(u for u in ids if u != v)) for v in ids}
    k = degree + 1 if degree % 2 and n % 2 else degree
    rng = random.Random(seed) if seed is not None else secrets.SystemRandom()
    ring = sorted(ids)  # canonical order first, so the result depends only on the seed
    rng.shuffle(ring)
    adj: dict[int, set[int]] = {v: set() for v in ring}
    for i, v in enumerate(ring):
        for step in range(1, k // 2 + 1):
            u = ring[(i + step) % n]
            adj[v].add(u)
            adj[u].add(v)
        if k % 2:
            u = ring[(i + n // 2) % n]
            adj[v].add(u)
            adj[u].add(v)
    return {v: tuple(sorted(adj[v])) for v in ids}
