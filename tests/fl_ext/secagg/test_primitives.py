"""SecAgg primitives with the real cryptography package: keys, Shamir, PRG masks, graphs, packing."""

import itertools
import math
import secrets

import numpy as np
import pytest

from fl_ext.secagg import graph, packing, prg, shamir
from fl_ext.secagg.keys import (
    KeyPair,
    SecAggError,
    agree,
    generate_keypair,
    open_sealed,
    public_from_private,
    seal,
)

# ---------------------------------------------------------------- keys


def test_agreement_is_symmetric_and_bound_to_info():
    a, b = generate_keypair(), generate_keypair()
    assert isinstance(a, KeyPair) and len(a.private) == 32 and len(a.public) == 32
    k_ab = agree(a.private, b.public, info=b"mask")
    assert k_ab == agree(b.private, a.public, info=b"mask") and len(k_ab) == 32
    assert k_ab != agree(a.private, b.public, info=b"share")
    assert k_ab != agree(a.private, generate_keypair().public, info=b"mask")


def test_public_from_private_matches_the_pair():
    a = generate_keypair()
    assert public_from_private(a.private) == a.public
    assert a.private.hex() not in repr(a)
    with pytest.raises(SecAggError, match="private key"):
        public_from_private(a.private[:31])


@pytest.mark.parametrize("peer", [b"\x01" * 31, bytes(32), b"\x01" + bytes(31), b"x" * 33])
def test_invalid_peer_key_is_a_secagg_error(peer):
    with pytest.raises(SecAggError, match="invalid peer public key"):
        agree(generate_keypair().private, peer, info=b"mask")


def test_seal_round_trip_and_fresh_nonces():
    key = secrets.token_bytes(32)
    msg = b"share of client 7"
    sealed = seal(key, msg, aad=b"7->9")
    assert open_sealed(key, sealed, aad=b"7->9") == msg
    assert seal(key, msg, aad=b"7->9") != sealed
    assert open_sealed(key, seal(key, b"", aad=b""), aad=b"") == b""


def test_seal_rejects_tampering_wrong_aad_wrong_key_and_short_input():
    key = secrets.token_bytes(32)
    sealed = seal(key, b"secret share", aad=b"7->9")
    for i in (0, 12, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(SecAggError, match="failed authentication"):
            open_sealed(key, bytes(bad), aad=b"7->9")
    with pytest.raises(SecAggError, match="failed authentication"):
        open_sealed(key, sealed, aad=b"9->7")
    with pytest.raises(SecAggError, match="failed authentication"):
        open_sealed(secrets.token_bytes(32), sealed, aad=b"7->9")
    with pytest.raises(SecAggError, match="failed authentication"):
        open_sealed(key, sealed[:27], aad=b"7->9")
    with pytest.raises(SecAggError, match="symmetric key"):
        seal(b"short", b"x", aad=b"")


# ---------------------------------------------------------------- shamir


@pytest.mark.parametrize(("t", "k"), [(1, 1), (1, 4), (2, 3), (3, 5), (5, 5), (4, 9)])
def test_any_t_subset_reconstructs(t, k):
    secret = secrets.token_bytes(32)
    xs = list(range(1, k + 1))
    ys = shamir.split(secret, threshold=t, xs=xs)
    assert len(ys) == k and all(0 <= y < shamir.PRIME for y in ys)
    for subset in itertools.combinations(zip(xs, ys, strict=True), t):
        assert shamir.combine(list(subset), threshold=t, length=32) == secret
    if t > 1:
        pts = list(zip(xs, ys, strict=True))[: t - 1]
        value = int.from_bytes(shamir.combine(pts, threshold=t - 1, length=66), "big")
        assert value != int.from_bytes(secret, "big")


def test_large_xs_and_65_byte_secrets():
    secret = b"\xff" * 65
    xs = [2**64 - 1, 2**63, 12345, shamir.PRIME - 1]
    ys = shamir.split(secret, threshold=3, xs=xs)
    pts = list(zip(xs, ys, strict=True))
    assert shamir.combine(pts[1:], threshold=3, length=65) == secret
    assert shamir.combine([(1, 0)], threshold=1, length=0) == b""


def test_combine_uses_the_first_threshold_points_and_flags_a_wrong_share():
    secret = secrets.token_bytes(32)
    xs = [1, 2, 3, 4]
    ys = shamir.split(secret, threshold=3, xs=xs)
    pts = list(zip(xs, ys, strict=True))
    assert shamir.combine([*pts[:3], (4, 5)], threshold=3, length=32) == secret
    with pytest.raises(SecAggError, match="does not fit in 32 bytes"):
        # A random lie moves the constant term to a (practically always) 521-bit value.
        lie = (ys[2] + 2**300 + secrets.randbelow(2**400)) % shamir.PRIME
        shamir.combine([pts[0], pts[1], (3, lie)], threshold=3, length=32)


def test_lagrange_at_zero_recovers_constant_terms():
    xs = [3, 8, 11]
    coeffs = shamir.lagrange_at_zero(xs)
    poly = [42, 7, 9]
    ys = [sum(c * x**i for i, c in enumerate(poly)) % shamir.PRIME for x in xs]
    assert sum(c * y for c, y in zip(coeffs, ys, strict=True)) % shamir.PRIME == 42


def test_consistent_detects_a_lying_share_holder():
    xs = list(range(1, 8))
    ys = shamir.split(secrets.token_bytes(32), threshold=4, xs=xs)
    pts = list(zip(xs, ys, strict=True))
    assert shamir.consistent(pts, threshold=4)
    assert shamir.consistent(pts[:4], threshold=4)
    assert shamir.consistent([*pts, pts[1]], threshold=4)  # a repeated honest point
    for i in range(4, 7):
        bad = list(pts)
        bad[i] = (bad[i][0], (bad[i][1] + 1) % shamir.PRIME)
        assert not shamir.consistent(bad, threshold=4)
    bad = list(pts)
    bad[0] = (bad[0][0], (bad[0][1] + 1) % shamir.PRIME)  # a lie among the first t points
    assert not shamir.consistent(bad, threshold=4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"secret": b"x" * 66, "threshold": 1, "xs": [1]}, "secret"),
        ({"secret": b"x", "threshold": 0, "xs": [1]}, "threshold=0"),
        ({"secret": b"x", "threshold": 3, "xs": [1, 2]}, "threshold=3"),
        ({"secret": b"x", "threshold": 2, "xs": [1, 1]}, "distinct"),
        ({"secret": b"x", "threshold": 1, "xs": [0]}, "x-coordinate 0"),
        ({"secret": b"x", "threshold": 1, "xs": [shamir.PRIME]}, "x-coordinate"),
    ],
)
def test_split_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        shamir.split(**kwargs)


def test_combine_and_consistent_validate():
    pts = list(zip([1, 2, 3], shamir.split(b"abc", threshold=2, xs=[1, 2, 3]), strict=True))
    with pytest.raises(ValueError, match="at least threshold=3"):
        shamir.combine(pts[:2], threshold=3, length=3)
    with pytest.raises(ValueError, match="distinct"):
        shamir.combine([pts[0], pts[0]], threshold=2, length=3)
    with pytest.raises(ValueError, match="share value"):
        shamir.combine([pts[0], (2, shamir.PRIME)], threshold=2, length=3)
    with pytest.raises(ValueError, match="share value"):
        shamir.combine([pts[0], (2, -1)], threshold=2, length=3)
    with pytest.raises(ValueError, match="at least threshold=4"):
        shamir.consistent(pts, threshold=4)


def test_share_bytes_round_trip_and_rejects_bad_input():
    for y in (0, 1, shamir.PRIME - 1, secrets.randbelow(shamir.PRIME)):
        b = shamir.share_to_bytes(y)
        assert len(b) == shamir.SHARE_BYTES and shamir.share_from_bytes(b) == y
    with pytest.raises(ValueError, match="66 bytes"):
        shamir.share_from_bytes(bytes(65))
    with pytest.raises(ValueError, match="PRIME"):
        shamir.share_from_bytes(shamir.PRIME.to_bytes(66, "big"))
    with pytest.raises(ValueError, match="share value"):
        shamir.share_to_bytes(shamir.PRIME)
    with pytest.raises(ValueError, match="share value"):
        shamir.share_to_bytes(-1)


# ---------------------------------------------------------------- prg


def test_word_dtype():
    assert prg.word_dtype(1) == np.uint16 and prg.word_dtype(16) == np.uint16
    assert prg.word_dtype(17) == np.uint32 and prg.word_dtype(32) == np.uint32
    for bad in (0, 33, -1):
        with pytest.raises(ValueError, match=r"bits must be in \[1, 32\]"):
            prg.word_dtype(bad)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 15, 16, 17, 1000, (1 << 22) // 4 + 3])
def test_mask_words_deterministic_per_seed_and_prefix_stable(size):
    seed = secrets.token_bytes(32)
    a = prg.mask_words(seed, size, np.uint32)
    assert a.dtype == np.uint32 and a.shape == (size,)
    assert np.array_equal(a, prg.mask_words(seed, size, np.uint32))
    out = np.empty(size, dtype=np.uint32)
    assert prg.mask_words(seed, size, np.uint32, out=out) is out and np.array_equal(out, a)
    # One keystream: the uint16 words are the little-endian halves of the uint32 words.
    assert np.array_equal(prg.mask_words(seed, 2 * size, np.uint16).view("<u4"), a)
    if size >= 4:
        assert not np.array_equal(a, prg.mask_words(secrets.token_bytes(32), size, np.uint32))


def test_mask_words_is_aes256_ctr_with_zero_nonce():
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    seed = bytes(range(32))
    enc = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    want = np.frombuffer(enc.update(bytes(4000)), dtype="<u2")
    assert np.array_equal(prg.mask_words(seed, 2000, np.uint16), want)


def test_mask_words_look_uniform():
    words = prg.mask_words(secrets.token_bytes(32), 1_000_000, np.uint16)
    sd = math.sqrt((2**32 - 1) / 12 / words.size)
    assert abs(words.mean() - 32767.5) < 5 * sd
    counts = np.bincount((words & 0xFF).astype(np.int64), minlength=256)
    expected = words.size / 256
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # 255 degrees of freedom: mean 255, sd ~22.6; 400 is ~6.4 sd out.
    assert chi2 < 400
    top = np.bincount((words >> 15).astype(np.int64), minlength=2)
    assert abs(top[0] - top[1]) < 5 * math.sqrt(words.size)


def test_mask_words_validates():
    with pytest.raises(ValueError, match="seed must be 32 bytes, got 31"):
        prg.mask_words(bytes(31), 4, np.uint16)
    with pytest.raises(ValueError, match="out must be"):
        prg.mask_words(bytes(32), 4, np.uint16, out=np.empty(4, dtype=np.uint32))
    with pytest.raises(ValueError, match="out must be"):
        prg.mask_words(bytes(32), 4, np.uint16, out=np.empty(8, dtype=np.uint16)[::2])
    with pytest.raises(ValueError, match="out must be"):
        prg.mask_words(bytes(32), 4, np.uint16, out=np.empty(5, dtype=np.uint16))
    with pytest.raises(ValueError, match="unsigned"):
        prg.mask_words(bytes(32), 4, np.int32)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_add_mask_then_subtract_restores_exactly(dtype):
    rng = np.random.default_rng(0)
    acc = rng.integers(0, np.iinfo(dtype).max, size=10_001, dtype=dtype, endpoint=True)
    orig = acc.copy()
    seed = secrets.token_bytes(32)
    prg.add_mask(acc, seed, sign=1)
    assert not np.array_equal(acc, orig)
    assert np.array_equal(acc, orig + prg.mask_words(seed, acc.size, dtype))  # wraps
    prg.add_mask(acc, seed, sign=-1)
    assert np.array_equal(acc, orig)


def test_pairwise_masks_cancel_in_the_sum():
    a, b = generate_keypair(), generate_keypair()
    seed_ab = agree(a.private, b.public, info=b"pairwise mask")
    seed_ba = agree(b.private, a.public, info=b"pairwise mask")
    x = np.arange(5000, dtype=np.uint32)
    y = np.full(5000, 2**32 - 3, dtype=np.uint32)
    ma, mb = x.copy(), y.copy()
    prg.add_mask(ma, seed_ab, sign=1)
    prg.add_mask(mb, seed_ba, sign=-1)
    assert np.array_equal(ma + mb, x + y)


def test_add_mask_validates():
    acc = np.zeros(4, dtype=np.uint16)
    for bad in (0, 2, True):
        with pytest.raises(ValueError, match="sign must be"):
            prg.add_mask(acc, bytes(32), sign=bad)
    with pytest.raises(ValueError, match="acc must be"):
        prg.add_mask(np.zeros(4, dtype=np.int64), bytes(32), sign=1)
    with pytest.raises(ValueError, match="acc must be"):
        prg.add_mask(np.zeros((2, 2), dtype=np.uint16), bytes(32), sign=1)


def test_prg_speed_is_measured():
    assert prg.prg_bytes_per_second(1 << 16) > 0


# ---------------------------------------------------------------- graph


def _check_graph(g, nodes):
    assert set(g) == set(nodes)
    for v, ns in g.items():
        assert v not in ns and list(ns) == sorted(ns) and len(set(ns)) == len(ns)
        for u in ns:
            assert v in g[u]


@pytest.mark.parametrize(
    ("n", "k"), [(10, 4), (10, 2), (11, 4), (10, 3), (100, 20), (8, 5), (9, 6)]
)
def test_harary_graph_is_regular_and_symmetric(n, k):
    nodes = [2**64 - 1, 2**63, *range(n - 2)]
    g = graph.neighbours(nodes, degree=k, seed=3)
    _check_graph(g, nodes)
    assert {len(ns) for ns in g.values()} == {k}


def test_odd_degree_with_odd_n_rounds_up():
    g = graph.neighbours(list(range(11)), degree=3, seed=1)
    _check_graph(g, range(11))
    assert {len(ns) for ns in g.values()} == {4}
    assert {len(ns) for ns in graph.neighbours(list(range(7)), degree=5).values()} == {6}


def test_harary_graph_is_connected():
    nodes = list(range(200))
    g = graph.neighbours(nodes, degree=4, seed=5)
    seen, todo = {0}, [0]
    while todo:
        for u in g[todo.pop()]:
            if u not in seen:
                seen.add(u)
                todo.append(u)
    assert seen == set(nodes)


def test_seed_fixes_the_graph_and_order_of_nodes_does_not_matter():
    nodes = [5, 2**64 - 1, 17, 2**63, 3, 9, 11, 40]
    g = graph.neighbours(nodes, degree=2, seed=42)
    assert g == graph.neighbours(list(reversed(nodes)), degree=2, seed=42)
    graphs = {tuple(sorted(graph.neighbours(nodes, degree=2).items())) for _ in range(20)}
    assert len(graphs) > 1  # unseeded: drawn from the OS CSPRNG


@pytest.mark.parametrize("degree", [None, 4, 5, 100])
def test_full_graph_when_degree_is_none_or_at_least_n_minus_1(degree):
    nodes = [2**64 - 1, 2**63, 0, 1, 2]
    g = graph.neighbours(nodes, degree=degree)
    _check_graph(g, nodes)
    for v in nodes:
        assert g[v] == tuple(sorted(u for u in nodes if u != v))


def test_small_graphs():
    assert graph.neighbours([7], degree=None) == {7: ()}
    assert graph.neighbours([7], degree=1) == {7: ()}
    assert graph.neighbours([], degree=None) == {}
    assert graph.neighbours([1, 2], degree=1) == {1: (2,), 2: (1,)}


def test_graph_validates():
    with pytest.raises(ValueError, match="degree=0"):
        graph.neighbours([1, 2, 3], degree=0)
    with pytest.raises(ValueError, match="degree=-1"):
        graph.neighbours([1, 2, 3], degree=-1)
    with pytest.raises(ValueError, match="distinct"):
        graph.neighbours([1, 2, 2], degree=None)
    with pytest.raises(ValueError, match="ints"):
        graph.neighbours([1, "2"], degree=None)


def test_default_degree():
    assert graph.default_degree(1) == 1 and graph.default_degree(2) == 1
    for n in (3, 4, 10, 100, 1000, 10**6):
        d = graph.default_degree(n)
        assert 2 <= d <= n - 1
        assert d % 2 == 0 or d == n - 1
    assert graph.default_degree(1000) == 30
    with pytest.raises(ValueError, match="n must be"):
        graph.default_degree(0)


# ---------------------------------------------------------------- packing


@pytest.mark.parametrize("bits", [1, 7, 8, 13, 15, 16, 17, 20, 31, 32])
@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 1000, 8 * 4096 + 5, 3 * 8 * 4096])
def test_pack_round_trip(bits, size):
    dtype = prg.word_dtype(bits)
    rng = np.random.default_rng(bits * 1000 + size)
    values = rng.integers(0, 1 << bits, size=size, dtype=np.uint64).astype(dtype)
    packed = packing.pack(values, bits)
    assert packed.dtype == np.uint8 and packed.shape == (packing.packed_size(size, bits),)
    assert packed.size == math.ceil(size * bits / 8)
    back = packing.unpack(packed, bits, size, dtype)
    assert back.dtype == dtype and np.array_equal(back, values)


def test_pack_layout_is_little_endian_bit_contiguous():
    v = np.array([1, 0, 3, 2, 1], dtype=np.uint16)  # 2 bits each: 01 00 11 10 | 01
    assert packing.pack(v, 2).tolist() == [0b10110001, 0b01]
    w = np.array([0x12345678, 0xFFFFFFFF], dtype=np.uint32)
    assert packing.pack(w, 32).tobytes() == w.astype("<u4").tobytes()
    assert packing.pack(np.array([0xABC], dtype=np.uint16), 12).tolist() == [0xBC, 0x0A]


def test_pack_into_wider_words_and_narrow_values():
    values = np.arange(100, dtype=np.uint32) % 128
    assert np.array_equal(packing.unpack(packing.pack(values, 7), 7, 100, np.uint16), values)


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError, match=r"< 2\*\*7"):
        packing.pack(np.array([0, 128], dtype=np.uint16), 7)
    with pytest.raises(ValueError, match="uint16 or uint32"):
        packing.pack(np.zeros(3, dtype=np.int32), 7)
    with pytest.raises(ValueError, match=r"bits must be in \[1, 32\]"):
        packing.pack(np.zeros(3, dtype=np.uint32), 33)


def test_unpack_rejects_wrong_length_nonzero_padding_and_bad_dtype():
    packed = packing.pack(np.array([1, 2, 3], dtype=np.uint16), 5)  # 15 bits -> 2 bytes
    with pytest.raises(ValueError, match="2 bytes for 3 values of 5 bits, got 3"):
        packing.unpack(np.append(packed, np.uint8(0)), 5, 3, np.uint16)
    with pytest.raises(ValueError, match="got 1"):
        packing.unpack(packed[:1], 5, 3, np.uint16)
    bad = packed.copy()
    bad[-1] |= 0x80  # the 16th bit is padding
    with pytest.raises(ValueError, match="padding"):
        packing.unpack(bad, 5, 3, np.uint16)
    with pytest.raises(ValueError, match="uint8"):
        packing.unpack(packed.astype(np.uint16), 5, 3, np.uint16)
    with pytest.raises(ValueError, match="wide enough"):
        packing.unpack(packing.pack(np.zeros(2, dtype=np.uint32), 20), 20, 2, np.uint16)
    big = packing.pack(np.ones(8 * 4096 + 3, dtype=np.uint16), 13)
    big[-1] |= 0x80
    with pytest.raises(ValueError, match="padding"):
        packing.unpack(big, 13, 8 * 4096 + 3, np.uint16)
