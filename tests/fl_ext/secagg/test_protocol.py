"""SecAgg+ rounds end to end with the real cryptography: exact sums, dropouts, hostile replies.

A round is driven by hand (no transport): every client message goes through
``ClientSession.to_state`` / ``from_state``, as a ClientApp that is a new process per message.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Callable, Iterable

import numpy as np
import pytest

from fl_ext.secagg import shamir
from fl_ext.secagg.client import ClientSession
from fl_ext.secagg.encoding import SecAggEncoding, bits_needed
from fl_ext.secagg.keys import SecAggError
from fl_ext.secagg.server import SecAggAbort, ServerSession, threshold_for
from fl_ext.secagg.wire import RoundParams, parse_share, share_bytes

PHASES = ("before_keys", "after_keys", "after_shares", "after_masked")

# ---------------------------------------------------------------- the round harness


def node_ids(rng: np.random.Generator, n: int) -> list[int]:
    """Flower-like node ids: random unsigned 64-bit ints, one of them >= 2**63."""
    ids = [int(rng.integers(2**63, 2**64, dtype=np.uint64))]
    while len(ids) < n:
        v = int(rng.integers(1, 2**64, dtype=np.uint64))
        if v not in ids:
            ids.append(v)
    rng.shuffle(ids)
    return ids


def client(state: dict) -> ClientSession:
    return ClientSession.from_state(state)


@dataclasses.dataclass
class Harness:
    """One round between a ServerSession and ClientSessions, one phase per method.

    ``drops[phase]``: the nodes that drop at that phase (``before_keys``: never advertise;
    ``after_keys``: no share reply; ``after_shares``: no masked input; ``after_masked``: no
    unmask reply). Clients are kept only as their stored state between messages.
    """

    nodes: list[int]
    params: RoundParams
    server: ServerSession
    drops: dict[str, set[int]]
    values: dict[int, np.ndarray]
    states: dict[int, dict] = dataclasses.field(default_factory=dict)
    key_req: dict = dataclasses.field(default_factory=dict)
    route: dict = dataclasses.field(default_factory=dict)
    unmask_req: dict = dataclasses.field(default_factory=dict)
    total: np.ndarray | None = None
    aborted_in: str | None = None
    abort: SecAggAbort | None = None

    @classmethod
    def make(
        cls,
        *,
        n: int,
        bits: int,
        degree: int | None = None,
        size: int = 33,
        fraction: float = 0.5,
        min_survivors: int | None = None,
        drops: dict[str, Iterable[int]] | None = None,
        seed: int = 0,
        nodes: list[int] | None = None,
        values: dict[int, np.ndarray] | None = None,
        round_number: int = 1,
    ) -> Harness:
        rng = np.random.default_rng(seed)
        nodes = node_ids(rng, n) if nodes is None else nodes
        k = n - 1 if degree is None else min(degree, n - 1)
        t = threshold_for(k, fraction)
        params = RoundParams(
            round=round_number, nonce=secrets.token_bytes(16), threshold=t, bits=bits, size=size
        )
        server = ServerSession(
            params=params,
            nodes=list(nodes),
            degree=degree,
            min_survivors=t if min_survivors is None else min_survivors,
            graph_seed=seed,
        )
        if values is None:
            values = {
                v: rng.integers(0, 2**bits, size, dtype=np.uint64).astype(params.dtype)
                for v in nodes
            }
        drop_sets = {phase: set((drops or {}).get(phase, ())) for phase in PHASES}
        return cls(nodes=nodes, params=params, server=server, drops=drop_sets, values=values)

    # the phases -----------------------------------------------------------
    def _close(self, name: str, call: Callable[[], object]) -> object:
        try:
            return call()
        except SecAggAbort as err:
            self.aborted_in, self.abort = name, err
            raise

    def keys(self) -> None:
        for v in self.nodes:
            if v in self.drops["before_keys"]:
                continue
            c = ClientSession.start(v, self.params)
            assert self.server.add_keys(v, *c.advertise()) is None
            self.states[v] = c.to_state()
        self.key_req = self._close("close_keys", self.server.close_keys)

    def shares(self) -> None:
        for v, neighbours in self.key_req.items():
            if v in self.drops["after_keys"]:
                continue
            c = client(self.states[v])
            sealed, commit = c.share(neighbours)
            assert self.server.add_shares(v, sealed, commit) is None
            self.states[v] = c.to_state()
        self.route = self._close("close_shares", self.server.close_shares)

    def masked(self, accepted: set[int] | None = None) -> None:
        for v, boxes in self.route.items():
            if v in self.drops["after_shares"]:
                continue
            c = client(self.states[v])
            y = c.masked(self.values[v], boxes)
            assert self.server.add_masked(v, y) is None
            self.states[v] = c.to_state()
        self.unmask_req = self._close(
            "close_masked", lambda: self.server.close_masked(accepted=accepted)
        )
        self.check_requests()

    def answer(self, v: int) -> tuple[dict[int, bytes], dict[int, bytes]]:
        c = client(self.states[v])
        seeds, sks = c.unmask(*self.unmask_req[v])
        self.states[v] = c.to_state()
        return seeds, sks

    def unmask(
        self,
        order: Iterable[int] | None = None,
        corrupt: Callable[[int, dict, dict], tuple[dict, dict]] | None = None,
    ) -> np.ndarray:
        for v in self.unmask_req if order is None else order:
            if v in self.drops["after_masked"]:
                continue
            seeds, sks = self.answer(v)
            if corrupt is not None:
                seeds, sks = corrupt(v, seeds, sks)
            assert self.server.add_unmask(v, seeds, sks) is None
        self.total = self._close("close_unmask", self.server.close_unmask)
        return self.total

    def run(self) -> Harness:
        """All four phases; an abort is recorded (``aborted_in``, ``abort``), not raised."""
        try:
            self.keys()
            self.shares()
            self.masked()
            self.unmask()
        except SecAggAbort:
            pass
        return self

    # checks ----------------------------------------------------------------
    def check_requests(self) -> None:
        """No node's self-mask seed and mask key are both requested, by anyone."""
        seed_owners = {m for s, _ in self.unmask_req.values() for m in s}
        key_owners = {m for _, d in self.unmask_req.values() for m in d}
        assert not seed_owners & key_owners
        assert seed_owners <= set(self.server.vectors)
        assert not key_owners & set(self.server.vectors)

    def included(self) -> set[int]:
        """The nodes whose masked input the server kept."""
        return set(self.server.vectors)

    def expected(self, nodes: Iterable[int] | None = None) -> np.ndarray:
        nodes = self.included() if nodes is None else nodes
        acc = np.zeros(self.params.size, dtype=np.int64)
        for v in nodes:
            acc += self.values[v].astype(np.int64)
        return (acc % (1 << self.params.bits)).astype(self.params.dtype)


def full_round(**kwargs) -> Harness:
    h = Harness.make(**kwargs).run()
    assert h.abort is None, f"{h.aborted_in}: {h.abort}"
    return h


def masked_round(**kwargs) -> Harness:
    """A harness whose round is through the masked-input phase (unmask requests out)."""
    h = Harness.make(**kwargs)
    h.keys()
    h.shares()
    h.masked()
    return h


# ---------------------------------------------------------------- 1. exactness


@pytest.mark.parametrize(
    ("n", "bits", "degree"),
    [(3, 8, None), (10, 16, None), (10, 20, 4), (11, 17, 6), (25, 24, 6), (12, 32, None)],
)
def test_unmasked_sum_is_the_plain_sum_mod_2_to_the_bits(n, bits, degree):
    h = full_round(n=n, bits=bits, degree=degree, seed=n * 100 + bits)
    assert h.included() == set(h.nodes)
    assert h.total is not None and h.total.dtype == h.params.dtype
    np.testing.assert_array_equal(h.total, h.expected(h.nodes))
    assert h.server.liars == set()
    assert h.server.survivors == {
        "selected": n, "keys": n, "shares": n, "masked": n, "unmask": n
    }  # fmt: skip
    if degree is not None:  # really sparse: each node masks with its neighbours only
        assert max(len(v) for v in h.server.graph.values()) < n - 1


def test_masked_inputs_hide_the_values():
    h = masked_round(n=4, bits=32, size=256, seed=5)
    for v, y in h.server.vectors.items():
        assert not np.array_equal(y, h.values[v])
        # uniform-looking: far from the plain values in most coordinates
        assert np.count_nonzero(y == h.values[v]) < 5


def _encode_all(enc: SecAggEncoding, updates, weights, seed=0):
    return {
        v: enc.encode(u, weight=weights[v], seed=seed + i)
        for i, (v, u) in enumerate(updates.items())
    }


def test_encoded_round_decodes_to_the_weighted_mean_of_the_quantized_values():
    rng = np.random.default_rng(11)
    n, d = 8, 50
    enc = SecAggEncoding.plan(clip_range=0.5, levels=127, max_weight=20, max_clients=n, size=d)
    assert enc.bits == bits_needed(max_clients=n, levels=127, max_weight=20) == 16
    nodes = node_ids(rng, n)
    updates = {v: (rng.standard_normal(d) * 0.4).astype(np.float32) for v in nodes}
    weights = {v: int(rng.integers(1, 21)) for v in nodes}
    words = _encode_all(enc, updates, weights)
    params_bits = enc.bits
    h = full_round(n=n, bits=params_bits, size=d + 1, nodes=nodes, values=words, seed=11)
    mean, weight = enc.decode(h.total)
    assert weight == sum(weights.values())
    # reference: the same integers, summed exactly, scaled in float64
    ints = sum(enc.signed(w) for w in words.values())
    assert ints[d] == weight
    ref = (ints[:d].astype(np.float64) * (enc.clip_range / enc.levels / weight)).astype(np.float32)
    np.testing.assert_array_equal(mean, ref)
    # and within one quantization step of the float weighted mean of the clipped updates
    clipped = {v: np.clip(u.astype(np.float64), -0.5, 0.5) for v, u in updates.items()}
    exact = sum(weights[v] * clipped[v] for v in nodes) / weight
    assert np.abs(mean - exact).max() <= enc.clip_range / enc.levels + 1e-6


@pytest.mark.parametrize(
    ("n", "max_weight", "levels", "bits"),
    [(7, 31, 151, 16), (5, 17, 771, 17)],  # n * W * levels = 2^(bits-1) - 1: the tightest fit
)
@pytest.mark.parametrize("sign", [1, -1])
def test_extreme_sums_do_not_wrap(n, max_weight, levels, bits, sign):
    d = 9
    bound = n * max_weight * levels
    assert bound == 2 ** (bits - 1) - 1
    enc = SecAggEncoding.plan(
        clip_range=0.25, levels=levels, max_weight=max_weight, max_clients=n, size=d
    )
    assert enc.bits == bits
    rng = np.random.default_rng(bits)
    nodes = node_ids(rng, n)
    # at and beyond the clip range: everything lands on +-levels
    updates = {
        v: np.full(d, sign * 0.25 * (1 + i % 3), dtype=np.float32) for i, v in enumerate(nodes)
    }
    words = _encode_all(enc, updates, dict.fromkeys(nodes, max_weight))
    h = full_round(n=n, bits=bits, size=d + 1, nodes=nodes, values=words, seed=bits)
    np.testing.assert_array_equal(enc.signed(h.total)[:d], np.full(d, sign * bound))
    mean, weight = enc.decode(h.total)
    assert weight == n * max_weight
    np.testing.assert_array_equal(mean, np.full(d, sign * 0.25, dtype=np.float32))


# ---------------------------------------------------------------- 2. encoding refusals


def test_bits_too_small_is_refused_with_the_numbers():
    with pytest.raises(ValueError) as err:
        SecAggEncoding.plan(
            clip_range=1.0, levels=1000, max_weight=100, max_clients=10, size=4, bits=16
        )
    msg = str(err.value)
    for number in ("bits=16", "10 clients", "100", "1000", "1000000", "21"):
        assert number in msg, (number, msg)
    # the fewest bits that fit are accepted
    ok = SecAggEncoding.plan(
        clip_range=1.0, levels=1000, max_weight=100, max_clients=10, size=4, bits=21
    )
    assert ok.bits == 21


def test_more_than_32_bits_needed_is_refused():
    need = bits_needed(max_clients=1000, levels=10_000, max_weight=10_000)
    assert need > 32
    with pytest.raises(ValueError, match=rf"{need} bits.*more than the 32"):
        SecAggEncoding.plan(
            clip_range=1.0, levels=10_000, max_weight=10_000, max_clients=1000, size=4
        )
    with pytest.raises(ValueError, match="bits"):
        SecAggEncoding(clip_range=1.0, levels=1, max_weight=1, bits=33, size=4)


@pytest.mark.parametrize("clip", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_clip_range_is_refused(clip):
    with pytest.raises(ValueError, match="clip_range"):
        SecAggEncoding.plan(clip_range=clip, levels=127, max_weight=1, max_clients=4, size=4)


@pytest.fixture
def small_encoding() -> SecAggEncoding:
    return SecAggEncoding.plan(clip_range=1.0, levels=127, max_weight=5, max_clients=4, size=6)


@pytest.mark.parametrize("weight", [0, -1, 6, True])
def test_encode_refuses_a_weight_out_of_range(small_encoding, weight):
    with pytest.raises(ValueError, match="weight"):
        small_encoding.encode(np.zeros(6, dtype=np.float32), weight=weight, seed=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_encode_refuses_non_finite_updates(small_encoding, bad):
    update = np.zeros(6, dtype=np.float32)
    update[3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        small_encoding.encode(update, weight=1, seed=0)


def test_encode_refuses_a_wrong_size(small_encoding):
    with pytest.raises(ValueError, match="values"):
        small_encoding.encode(np.zeros(5, dtype=np.float32), weight=1, seed=0)


# ---------------------------------------------------------------- 3. dropouts

# full graph of 10: threshold 5 of 9 neighbours; a survivor needs 5 answering neighbours, so
# 4 dropouts in all are tolerated, whatever the phases they happen in.
N_DROP, T_DROP = 10, 5


def _drops(nodes: list[int], counts: dict[str, int]) -> dict[str, list[int]]:
    out, i = {}, 0
    for phase in PHASES:
        out[phase] = nodes[i : i + counts.get(phase, 0)]
        i += counts.get(phase, 0)
    return out


def _dropout_round(counts: dict[str, int], *, degree=None, n=N_DROP, seed=3) -> Harness:
    nodes = node_ids(np.random.default_rng(seed), n)
    h = Harness.make(n=n, bits=20, degree=degree, nodes=nodes, drops=_drops(nodes, counts))
    assert h.params.threshold == (T_DROP if degree is None else threshold_for(degree, 0.5))
    return h.run()


@pytest.mark.parametrize(
    "counts",
    [
        {"before_keys": 4},
        {"after_keys": 4},
        {"after_shares": 4},
        {"after_masked": 4},
        {"before_keys": 1, "after_keys": 1, "after_shares": 1, "after_masked": 1},
        {"after_keys": 2, "after_masked": 2},
        {"before_keys": 2, "after_shares": 2},
    ],
    ids=lambda c: "+".join(f"{k}={v}" for k, v in c.items()),
)
def test_tolerated_dropouts_unmask_exactly_the_survivors_sum(counts):
    h = _dropout_round(counts)
    assert h.abort is None, f"{h.aborted_in}: {h.abort}"
    dropped_before_masking = (
        h.drops["before_keys"] | h.drops["after_keys"] | h.drops["after_shares"]
    )
    assert h.included() == set(h.nodes) - dropped_before_masking
    np.testing.assert_array_equal(h.total, h.expected(set(h.nodes) - dropped_before_masking))
    assert h.server.survivors["unmask"] == N_DROP - sum(counts.values())
    assert h.server.liars == set()


def test_sparse_graph_tolerates_one_dropout_of_every_kind():
    counts = {"before_keys": 1, "after_keys": 1, "after_shares": 1, "after_masked": 1}
    h = _dropout_round(counts, degree=6, n=14, seed=8)
    assert h.abort is None, f"{h.aborted_in}: {h.abort}"
    assert max(len(v) for v in h.server.graph.values()) == 6
    expected_in = set(h.nodes) - h.drops["before_keys"] - h.drops["after_keys"]
    expected_in -= h.drops["after_shares"]
    assert h.included() == expected_in
    np.testing.assert_array_equal(h.total, h.expected(expected_in))


@pytest.mark.parametrize(
    ("counts", "where", "message"),
    [
        ({"before_keys": 5}, "close_keys", "cannot hold"),
        ({"after_keys": 5}, "close_shares", "nodes shared keys"),
        ({"after_shares": 5}, "close_masked", "self mask needs 5 surviving neighbours"),
        ({"after_masked": 5}, "close_unmask", "4 shares, 5 needed"),
        ({"before_keys": 2, "after_keys": 3}, "close_shares", "shared keys"),
        ({"after_keys": 2, "after_shares": 1, "after_masked": 2}, "close_unmask", "5 needed"),
        ({"before_keys": 1, "after_keys": 1, "after_shares": 3}, "close_masked", "needs 5"),
    ],
    ids=lambda c: "+".join(f"{k}={v}" for k, v in c.items()) if isinstance(c, dict) else None,
)
def test_one_dropout_too_many_aborts_in_the_right_phase(counts, where, message):
    h = _dropout_round(counts)
    assert h.aborted_in == where, (h.aborted_in, h.abort)
    assert isinstance(h.abort, SecAggAbort) and message in str(h.abort)
    assert h.total is None  # nothing unmasked, not even partially
    phases = ("close_keys", "close_shares", "close_masked", "close_unmask")
    if phases.index(where) <= phases.index("close_masked"):
        assert h.unmask_req == {} and h.server.requests == {}
        assert h.server.seed_points == {} and h.server.key_points == {}
    else:
        # requests went out, but never both secrets of one node (checked in h.masked())
        seed_owners = {m for s, _ in h.unmask_req.values() for m in s}
        key_owners = {m for _, d in h.unmask_req.values() for m in d}
        assert seed_owners and not seed_owners & key_owners
        assert not set(h.server.seed_points) & set(h.server.key_points)


def test_min_survivors_above_the_threshold_aborts_earlier():
    nodes = node_ids(np.random.default_rng(4), 10)
    h = Harness.make(
        n=10, bits=16, nodes=nodes, min_survivors=8, drops={"after_shares": nodes[:3]}
    ).run()
    assert h.aborted_in == "close_masked" and "needs 8" in str(h.abort)
    with pytest.raises(ValueError, match="below the threshold"):
        Harness.make(n=10, bits=16, min_survivors=4)


def test_rejected_survivor_counts_as_dropped():
    h = Harness.make(n=N_DROP, bits=16, seed=6)
    out = h.nodes[0]
    kept = set(h.nodes) - {out}
    h.keys()
    h.shares()
    h.masked(accepted=kept)  # the caller's own check refused one masked input
    assert h.included() == kept
    assert all(out in dropped for _, dropped in h.unmask_req.values())
    np.testing.assert_array_equal(h.unmask(), h.expected(kept))


# ---------------------------------------------------------------- 4. late and duplicate replies


def test_duplicate_and_late_key_advertisements_are_refused():
    h = Harness.make(n=6, bits=16, seed=21)
    late = h.nodes[-1]
    sessions = {v: ClientSession.start(v, h.params) for v in h.nodes[:-1]}
    for v, c in sessions.items():
        assert h.server.add_keys(v, *c.advertise()) is None
    first = h.nodes[0]
    original = h.server.keys[first]
    assert "duplicate" in h.server.add_keys(first, *sessions[first].advertise())
    assert "duplicate" in h.server.add_keys(
        first, *ClientSession.start(first, h.params).advertise()
    )
    assert h.server.keys[first] == original
    # another node's key, or one key twice, or a wrong length
    other = ClientSession.start(late, h.params)
    assert "already advertised" in h.server.add_keys(
        late, sessions[first].enc.public, other.mask.public
    )
    assert "distinct" in h.server.add_keys(late, other.enc.public, other.enc.public)
    assert "32-byte" in h.server.add_keys(late, other.enc.public[:31], other.mask.public)
    assert "not asked" in h.server.add_keys(2**64 - 1, *other.advertise())
    assert late not in h.server.keys
    req = h.server.close_keys()
    assert h.server.survivors["keys"] == len(h.nodes) - 1 == len(req)
    assert "closed" in h.server.add_keys(late, *other.advertise())  # after close_keys
    assert late not in h.server.keys and late not in h.server.graph


def test_shares_from_nodes_not_asked_duplicates_and_late_are_refused():
    nodes = node_ids(np.random.default_rng(22), 6)
    h = Harness.make(n=6, bits=16, nodes=nodes, drops={"before_keys": [nodes[0]]})
    h.keys()
    some = next(iter(h.key_req))
    c = client(h.states[some])
    sealed, commit = c.share(h.key_req[some])
    assert "not asked" in h.server.add_shares(nodes[0], sealed, commit)
    assert "not asked" in h.server.add_shares(12345, sealed, commit)
    partial = dict(list(sealed.items())[1:])
    assert "exactly the node's neighbours" in h.server.add_shares(some, partial, commit)
    assert "32 bytes" in h.server.add_shares(some, sealed, commit[:16])
    bad_len = {m: b[:-1] for m, b in sealed.items()}
    assert "bytes" in h.server.add_shares(some, bad_len, commit)
    assert h.server.add_shares(some, sealed, commit) is None
    assert "duplicate" in h.server.add_shares(some, sealed, commit)
    assert h.server.sealed[some] == sealed
    # the others reply; a late reply after close_shares is refused
    late = next(v for v in h.key_req if v != some)
    for v in h.key_req:
        if v in (some, late):
            continue
        cv = client(h.states[v])
        assert h.server.add_shares(v, *cv.share(h.key_req[v])) is None
    route = h.server.close_shares()
    assert late not in route
    cl = client(h.states[late])
    assert "closed" in h.server.add_shares(late, *cl.share(h.key_req[late]))
    assert all(late not in boxes for boxes in route.values())


def test_duplicate_and_late_masked_inputs_are_refused_and_the_sum_is_unchanged():
    nodes = node_ids(np.random.default_rng(23), 8)
    h = Harness.make(n=8, bits=16, nodes=nodes, drops={"after_shares": [nodes[1]]})
    h.keys()
    h.shares()
    for v, boxes in h.route.items():
        if v in h.drops["after_shares"]:
            continue
        c = client(h.states[v])
        y = c.masked(h.values[v], boxes)
        assert h.server.add_masked(v, y) is None
        h.states[v] = c.to_state()
        again = y.copy()
        again[0] ^= 1
        assert "duplicate" in h.server.add_masked(v, again)
        assert "duplicate" in h.server.add_masked(v, y)
        assert h.server.vectors[v] is y
    p = h.params
    assert "must be" in h.server.add_masked(nodes[1], np.zeros(p.size + 1, p.dtype))
    assert "must be" in h.server.add_masked(nodes[1], np.zeros(p.size, np.uint32))
    assert "not asked" in h.server.add_masked(2**63, np.zeros(p.size, p.dtype))
    h.unmask_req = h.server.close_masked()
    # the late node's input, after the server asked for its key shares, is refused
    late = client(h.states[nodes[1]])
    y_late = late.masked(h.values[nodes[1]], h.route[nodes[1]])
    assert "closed" in h.server.add_masked(nodes[1], y_late)
    assert nodes[1] not in h.server.vectors
    np.testing.assert_array_equal(h.unmask(), h.expected(set(nodes) - {nodes[1]}))


def test_duplicate_and_unrequested_unmask_answers_are_refused():
    nodes = node_ids(np.random.default_rng(24), 8)
    h = masked_round(n=8, bits=16, nodes=nodes, drops={"after_shares": [nodes[2]]})
    a = next(iter(h.unmask_req))
    seeds, sks = h.answer(a)
    assert sks  # a's neighbour nodes[2] dropped: its key share is asked for
    assert "not asked" in h.server.add_unmask(nodes[2], seeds, sks)
    assert "not asked" in h.server.add_unmask(7, seeds, sks)
    assert "not the ones requested" in h.server.add_unmask(a, seeds, {})
    assert "not the ones requested" in h.server.add_unmask(a, {**seeds, **sks}, {})
    assert h.server.add_unmask(a, seeds, sks) is None
    counts = {m: len(p) for m, p in h.server.seed_points.items()}
    assert "duplicate" in h.server.add_unmask(a, seeds, sks)
    assert {m: len(p) for m, p in h.server.seed_points.items()} == counts
    rest = [v for v in h.unmask_req if v != a]
    np.testing.assert_array_equal(h.unmask(order=rest), h.expected())


# ---------------------------------------------------------------- 5. tampering


def _flip(box: bytes, i: int) -> bytes:
    b = bytearray(box)
    b[i] ^= 0x01
    return bytes(b)


@pytest.fixture(scope="module")
def shared_round() -> Harness:
    """A full-graph round of 5 through the share phase (states of phase 'shared')."""
    h = Harness.make(n=5, bits=16, seed=31)
    h.keys()
    h.shares()
    return h


@pytest.mark.parametrize("where", [0, 11, 12, 40, -17, -1])  # nonce, body, tag
def test_a_flipped_byte_fails_authentication(shared_round, where):
    h = shared_round
    r = h.nodes[0]
    boxes = dict(h.route[r])
    s = next(iter(boxes))
    boxes[s] = _flip(boxes[s], where)
    with pytest.raises(SecAggError, match="authentication"):
        client(h.states[r]).masked(h.values[r], boxes)
    # the untouched boxes open fine
    client(h.states[r]).masked(h.values[r], h.route[r])


def test_misrouted_shares_fail_authentication(shared_round):
    h = shared_round
    r1, r2, r3 = h.nodes[:3]
    s = h.nodes[3]
    boxes = dict(h.route[r1])
    boxes[s] = h.route[r2][s]  # s's share for r2, delivered to r1
    with pytest.raises(SecAggError, match="authentication"):
        client(h.states[r1]).masked(h.values[r1], boxes)
    swapped = dict(h.route[r1])
    swapped[r2], swapped[r3] = swapped[r3], swapped[r2]  # two senders' boxes swapped
    with pytest.raises(SecAggError, match="authentication"):
        client(h.states[r1]).masked(h.values[r1], swapped)
    with pytest.raises(SecAggError, match="not neighbours"):
        client(h.states[r1]).masked(h.values[r1], {**h.route[r1], r1: h.route[r2][r1]})


def test_a_share_replayed_from_another_round_fails(shared_round):
    one = shared_round
    r, s = one.nodes[:2]
    # round 2, same nodes, fresh keys
    two = Harness.make(n=5, bits=16, nodes=one.nodes, seed=32, round_number=2)
    two.keys()
    two.shares()
    replay = {**two.route[r], s: one.route[r][s]}
    with pytest.raises(SecAggError, match="authentication"):
        client(two.states[r]).masked(two.values[r], replay)
    # even a client that kept its keys (and its peers') is bound to the round's parameters
    old = client(one.states[r])
    assert old.masked(one.values[r], one.route[r]) is not None  # control: same round opens
    for params in (
        dataclasses.replace(one.params, round=2),
        dataclasses.replace(one.params, nonce=secrets.token_bytes(16)),
    ):
        moved = dataclasses.replace(client(one.states[r]), params=params)
        with pytest.raises(SecAggError, match="authentication"):
            moved.masked(one.values[r].copy(), one.route[r])


def test_wrong_phase_order_is_refused(shared_round):
    h = shared_round
    r = h.nodes[0]
    fresh = ClientSession.start(r, h.params)
    with pytest.raises(SecAggError, match="phase 'advertised'"):
        fresh.masked(h.values[r], h.route[r])
    with pytest.raises(SecAggError, match="phase 'advertised'"):
        fresh.unmask([], [])
    c = client(h.states[r])
    with pytest.raises(SecAggError, match="phase 'shared'"):
        c.share(h.key_req[r])
    with pytest.raises(SecAggError, match="phase 'shared'"):
        c.unmask([], [])
    c.masked(h.values[r], h.route[r])
    with pytest.raises(SecAggError, match="phase 'masked'"):
        c.masked(h.values[r], h.route[r])
    peers = sorted(c.held)
    c.unmask(peers, [])
    with pytest.raises(SecAggError, match="phase 'done'"):
        c.unmask(peers, [])
    with pytest.raises(SecAggError, match="phase 'done'"):
        ClientSession.from_state(c.to_state()).unmask(peers, [])


def test_client_refuses_bad_inputs(shared_round):
    h = shared_round
    r = h.nodes[0]
    c = client(h.states[r])
    p = h.params
    with pytest.raises(SecAggError, match="encoded update"):
        c.masked(np.zeros(p.size, np.uint32), h.route[r])
    with pytest.raises(SecAggError, match="live neighbours"):
        c.masked(h.values[r], dict(list(h.route[r].items())[: p.threshold - 1]))
    fresh = ClientSession.start(r, p)
    neighbours = dict(h.key_req[r])
    with pytest.raises(SecAggError, match="own neighbour"):
        fresh.share({**neighbours, r: fresh.advertise()})
    with pytest.raises(SecAggError, match="repeats"):
        fresh.share({**neighbours, next(iter(neighbours)): fresh.advertise()})
    with pytest.raises(SecAggError, match="cannot hold"):
        fresh.share(dict(list(neighbours.items())[: p.threshold - 1]))


def test_state_round_trip_preserves_behaviour(shared_round):
    h = shared_round
    r = h.nodes[0]
    a = client(h.states[r])
    b = ClientSession.from_state(a.to_state())
    assert b.to_state() == a.to_state() == h.states[r]
    assert b.advertise() == a.advertise() and b.seed == a.seed and b.peers == a.peers
    ya = a.masked(h.values[r], h.route[r])
    yb = b.masked(h.values[r], h.route[r])
    np.testing.assert_array_equal(ya, yb)
    a2 = ClientSession.from_state(a.to_state())
    assert a2.held == a.held and a2.phase == "masked"
    peers = sorted(a.held)
    ask = (peers[:2], peers[2:])
    assert a2.unmask(*ask) == b.unmask(*ask)
    for key in ("held", "seed", "phase"):
        broken = {k: v for k, v in a.to_state().items() if k != key}
        with pytest.raises(SecAggError, match=key):
            ClientSession.from_state(broken)
    with pytest.raises(SecAggError, match="stored phase"):
        ClientSession.from_state({**a.to_state(), "phase": "unmasked"})
    assert a.enc.private.hex() not in repr(a)


# ---------------------------------------------------------------- 6. unmask requests


def test_both_shares_of_one_peer_are_refused_and_one_answer_per_round():
    h = masked_round(n=6, bits=16, seed=41)
    r = h.nodes[0]
    c = client(h.states[r])
    peers = sorted(c.held)
    j = peers[0]
    with pytest.raises(SecAggError, match="both"):
        c.unmask([j], [j])
    with pytest.raises(SecAggError, match="both"):
        c.unmask(peers, [peers[-1]])
    with pytest.raises(SecAggError, match="no shares held"):
        c.unmask([r], [])
    with pytest.raises(SecAggError, match="twice"):
        c.unmask([j, j], [])
    # a refused request gave nothing away; the first well-formed one is answered, once
    seeds, sks = c.unmask([j], [])
    assert set(seeds) == {j} and sks == {}
    with pytest.raises(SecAggError, match="phase 'done'"):
        c.unmask([], [peers[1]])  # disjoint from the first request, still refused
    stored = ClientSession.from_state(c.to_state())
    with pytest.raises(SecAggError, match="phase 'done'"):
        stored.unmask([], [j])


# ---------------------------------------------------------------- 7. lying holders


def _lie_about(owner_pick: Callable[[int, dict], Iterable[int]], liars: set[int]):
    """An unmask hook: each liar adds 1 to the y of the seed/key shares it picks."""

    def corrupt(v, seeds, sks):
        if v not in liars:
            return seeds, sks
        table = seeds if seeds else sks
        for owner in owner_pick(v, table):
            x, y = parse_share(table[owner])
            table[owner] = share_bytes(x, (y + 1) % shamir.PRIME)
        return seeds, sks

    return corrupt


def test_a_lying_holder_is_outvoted_and_named():
    h = masked_round(n=10, bits=16, seed=51)
    liar = h.nodes[3]
    order = [v for v in h.nodes if v != liar] + [liar]
    corrupt = _lie_about(lambda v, table: [next(iter(table))], {liar})
    h.server.audit_shares = True  # the lie is in a share no reconstruction needs
    np.testing.assert_array_equal(h.unmask(order=order, corrupt=corrupt), h.expected(h.nodes))
    assert h.server.liars == {liar}


def test_an_unneeded_lying_share_is_harmless_without_the_audit():
    h = masked_round(n=10, bits=16, seed=51)
    liar = h.nodes[3]
    order = [v for v in h.nodes if v != liar] + [liar]
    corrupt = _lie_about(lambda v, table: [next(iter(table))], {liar})
    np.testing.assert_array_equal(h.unmask(order=order, corrupt=corrupt), h.expected(h.nodes))
    assert h.server.liars == set()  # every secret was verified from honest shares


def test_a_holder_lying_about_a_dropped_key_is_outvoted_and_named():
    nodes = node_ids(np.random.default_rng(52), 10)
    h = masked_round(n=10, bits=16, nodes=nodes, drops={"after_shares": [nodes[0]]})
    liar = nodes[5]

    def corrupt(v, seeds, sks):
        if v == liar:
            x, y = parse_share(sks[nodes[0]])
            sks[nodes[0]] = share_bytes(x, (y + 12345) % shamir.PRIME)
        return seeds, sks

    order = [v for v in h.unmask_req if v != liar] + [liar]
    h.server.audit_shares = True
    np.testing.assert_array_equal(h.unmask(order=order, corrupt=corrupt), h.expected())
    assert h.server.liars == {liar}


def test_a_lying_holder_that_answers_first_is_outvoted():
    h = masked_round(n=10, bits=16, seed=53)
    liar = h.nodes[0]
    corrupt = _lie_about(lambda v, table: list(table), {liar})
    order = [liar] + [v for v in h.nodes if v != liar]
    h.server.audit_shares = True  # where its shares fall in the x order does not matter then
    np.testing.assert_array_equal(h.unmask(order=order, corrupt=corrupt), h.expected(h.nodes))
    assert h.server.liars == {liar}


def test_too_many_liars_abort_as_inconsistent():
    h = masked_round(n=10, bits=16, seed=54)
    liars = set(h.nodes[:5])  # 5 of the 9 holders of every honest seed: no 5 honest shares
    corrupt = _lie_about(lambda v, table: list(table), liars)
    with pytest.raises(SecAggAbort, match="inconsistent"):
        h.unmask(corrupt=corrupt)
    assert h.total is None and h.aborted_in == "close_unmask"


def test_a_share_with_the_wrong_x_is_refused():
    h = masked_round(n=6, bits=16, seed=55)
    v = h.nodes[0]
    seeds, sks = h.answer(v)
    owner = next(iter(seeds))
    x, y = parse_share(seeds[owner])
    for bad, reason in (
        (share_bytes(x % 5 + 1, y), f"has x={x % 5 + 1}, the holder's is {x}"),
        (b"\0\0" + seeds[owner][2:], ">= 1"),
        (seeds[owner][:-1], "bytes"),
        (seeds[owner][:2] + b"\xff" * shamir.SHARE_BYTES, "field element"),
    ):
        got = h.server.add_unmask(v, {**seeds, owner: bad}, sks)
        assert got is not None and reason in got, got
    # nothing of the refused answers was kept; the honest one is still taken
    assert h.server.seed_points == {} and v not in h.server.answered
    assert h.server.add_unmask(v, seeds, sks) is None
    assert all(len(p) == 1 for p in h.server.seed_points.values())
    rest = [u for u in h.unmask_req if u != v]
    np.testing.assert_array_equal(h.unmask(order=rest), h.expected(h.nodes))


# ---------------------------------------------------------------- 8. fresh keys per round


def test_every_start_draws_fresh_keys_and_seed():
    p = RoundParams(round=1, nonce=secrets.token_bytes(16), threshold=2, bits=16, size=4)
    node = 2**64 - 1
    a, b = ClientSession.start(node, p), ClientSession.start(node, p)
    assert a.enc.public != b.enc.public and a.mask.public != b.mask.public
    assert a.enc.private != b.enc.private and a.mask.private != b.mask.private
    assert a.seed != b.seed and len(a.seed) == 32
    assert len({a.enc.public, a.mask.public, b.enc.public, b.mask.public}) == 4
    p2 = dataclasses.replace(p, round=2, nonce=secrets.token_bytes(16))
    c = ClientSession.start(node, p2)
    assert c.enc.public not in (a.enc.public, b.enc.public) and c.seed not in (a.seed, b.seed)


def test_threshold_for():
    assert threshold_for(9, 0.5) == 5
    assert threshold_for(6, 0.5) == 4  # always a majority
    assert threshold_for(1, 0.01) == 1
    assert threshold_for(10, 1.0) == 10
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=re.escape("(0, 1]")):
            threshold_for(5, bad)


def test_a_minority_threshold_is_refused_by_the_client():
    """With t <= k/2 a server could ask disjoint holders for the two secrets of one client."""
    from fl_ext.secagg.client import ClientSession
    from fl_ext.secagg.keys import generate_keypair
    from fl_ext.secagg.wire import RoundParams

    params = RoundParams(round=1, nonce=b"\x01" * 16, threshold=3, bits=16, size=4)
    session = ClientSession.start(1, params)
    peers = {n: (generate_keypair().public, generate_keypair().public) for n in range(2, 8)}
    with pytest.raises(SecAggError, match="not a majority"):
        session.share(peers)  # 6 neighbours, threshold 3


def test_the_server_threshold_is_always_a_majority_of_the_neighbourhood():
    from fl_ext.secagg.server import threshold_for

    assert [threshold_for(k, 0.5) for k in (1, 2, 6, 9, 20)] == [1, 2, 4, 5, 11]
    assert threshold_for(10, 0.8) == 8


def test_a_liar_whose_share_is_needed_is_outvoted_without_the_audit():
    """The lowest x of every owner is in the first subset tried: its lie fails the check."""
    h = masked_round(n=10, bits=16, seed=55)
    graph = h.server.graph
    liar = min(h.nodes)  # rank 1 (x = 1) among the neighbours of every other node (full graph)
    assert all(graph[o].index(liar) == 0 for o in h.nodes if o != liar)
    corrupt = _lie_about(lambda v, table: list(table), {liar})
    np.testing.assert_array_equal(h.unmask(corrupt=corrupt), h.expected(h.nodes))
    assert h.server.liars == {liar}
