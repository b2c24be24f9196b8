"""One suite over every codec: round-trip bounds, unbiasedness, chains, error feedback, bad payloads."""

import numpy as np
import pytest

from fl_ext.codecs import (
    QSGD,
    BlockQuant,
    Cast,
    Chain,
    ErrorFeedback,
    Identity,
    PayloadError,
    RandomK,
    SignScale,
    Ternary,
    TopK,
    payload_bytes,
)
from fl_ext.codecs.base import Codec
from fl_ext.specs import build_from_spec

D = 10_001  # not a multiple of blocks, bytes or chunks


def _x(seed=0, d=D):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=d) * rng.uniform(0.01, 3, size=d)).astype(np.float32)


CODECS = {
    "identity": Identity(),
    "float16": Cast(dtype="float16"),
    "bfloat16": Cast(dtype="bfloat16"),
    "int8": BlockQuant(bits=8),
    "int8_stochastic": BlockQuant(bits=8, rounding="stochastic"),
    "int4": BlockQuant(bits=4, block=64),
    "qsgd": QSGD(levels=16),
    "topk": TopK(fraction=0.01),
    "topk_sampled": TopK(fraction=0.01, method="sampled"),
    "topk_raw_indices": TopK(fraction=0.05, pack_indices=False),
    "randomk": RandomK(fraction=0.1),
    "sign": SignScale(),
    "ternary": Ternary(),
    "topk_int8": Chain(stages=[TopK(fraction=0.01), BlockQuant(bits=8)]),
    "topk_int4": Chain(stages=[TopK(fraction=0.01), BlockQuant(bits=4, block=32)]),
}


def _bound(name, codec, x, out):
    """Per-element error bound the codec guarantees."""
    if name == "identity":
        return np.zeros_like(x)
    if name == "float16":
        return np.abs(x) * 2.0**-11 + 6e-8
    if name == "bfloat16":
        return np.abs(x) * 2.0**-8
    if isinstance(codec, BlockQuant):
        blocks = np.abs(np.pad(x, (0, -len(x) % codec.block))).reshape(-1, codec.block).max(1)
        scale = np.repeat(blocks / (127 if codec.bits == 8 else 7), codec.block)[: len(x)]
        return scale * (0.5 if codec.rounding == "nearest" else 1.0) * 1.0001 + 1e-12
    if isinstance(codec, QSGD):
        return np.full_like(x, np.linalg.norm(x) / codec.levels * 1.0001)
    return None


@pytest.mark.parametrize("name", list(CODECS))
def test_round_trip(name):
    codec = CODECS[name]
    x = _x()
    before = x.copy()
    payload = codec.encode(x, np.random.default_rng(1))
    out = codec.decode(payload, D)
    assert np.array_equal(x, before)  # input untouched
    assert out.dtype == np.float32 and out.shape == (D,)
    bound = _bound(name, codec, x, out)
    if bound is not None:
        assert (np.abs(out - x) <= bound).all()
    if name.startswith("topk"):
        kept = out != 0
        if name != "topk_sampled":
            k = int(
                np.ceil(
                    codec.stages[0].fraction * D
                    if name.startswith("topk_int")
                    else codec.fraction * D
                )
            )
            assert kept.sum() == k
            assert np.abs(x[kept]).min() >= np.abs(x[~kept]).max()
        else:
            assert 0.5 * 0.01 * D <= kept.sum() <= 1.5 * 0.01 * D
    if name == "sign":
        np.testing.assert_allclose(np.abs(out), np.abs(x).mean(), rtol=1e-6)
        assert (np.sign(out) == np.where(x < 0, -1, 1)).all()
    if name == "ternary":
        assert np.isin(np.abs(out), [0.0, np.abs(x).max()]).all()
        assert (np.sign(out[out != 0]) == np.sign(x[out != 0])).all()
    assert payload_bytes(payload) <= 4 * D + 16


def test_compression_ratios():
    x = _x(d=1_000_000)
    rng = np.random.default_rng(0)
    ratio = {n: 4e6 / payload_bytes(c.encode(x, rng)) for n, c in CODECS.items() if n != "identity"}
    assert ratio["float16"] == pytest.approx(2.0)
    assert ratio["int8"] > 3.9 and ratio["int4"] > 7.0
    assert ratio["sign"] > 31 and ratio["ternary"] > 15.9
    assert ratio["topk_int8"] > 150  # 1% kept, ~7-bit gaps + 1-byte values


@pytest.mark.parametrize("name", [n for n, c in CODECS.items() if c.unbiased and n != "identity"])
def test_stochastic_codecs_are_unbiased(name):
    # Unbiased: the error of the mean of T decodes shrinks like 1/sqrt(T) times the error of
    # one decode; a bias would not shrink.
    codec = CODECS[name]
    x = _x(d=2000)
    rng = np.random.default_rng(2)
    trials = 400
    outs = np.stack([codec.decode(codec.encode(x, rng), len(x)) for _ in range(trials)])
    one = np.sqrt(((outs - x) ** 2).sum(1).mean())
    assert np.linalg.norm(outs.mean(0) - x) <= 3 * one / np.sqrt(trials)


def test_nearest_rounding_is_biased_so_the_test_above_can_fail():
    x = _x(d=2000)
    outs = np.stack(
        [CODECS["int4"].decode(CODECS["int4"].encode(x, np.random.default_rng(0)), len(x))] * 400
    )
    one = np.sqrt(((outs - x) ** 2).sum(1).mean())
    assert np.linalg.norm(outs.mean(0) - x) > 3 * one / np.sqrt(400)


def test_error_feedback_recovers_the_dropped_mass():
    # A constant update under top-1%: without feedback 99% of it never arrives; with feedback
    # the average of what arrived converges to it.
    codec = TopK(fraction=0.01)
    x = _x()
    rng = np.random.default_rng(0)
    ef = ErrorFeedback()
    sent = np.zeros(D)
    for t in range(1, 401):
        sent += codec.decode(ef.encode(codec, x, rng), D)
        if t == 100:
            after_100 = np.linalg.norm(sent / t - x)
    np.testing.assert_allclose(sent + ef.residual, 400 * x.astype(np.float64), rtol=1e-4, atol=1e-2)
    without = np.linalg.norm(codec.decode(codec.encode(x, rng), D) - x)
    after_400 = np.linalg.norm(sent / 400 - x)
    assert after_400 < after_100 < 0.5 * without and after_400 < 0.15 * without


@pytest.mark.parametrize("name", list(CODECS))
def test_spec_round_trip_builds_the_same_codec(name):
    codec = CODECS[name]
    rebuilt = build_from_spec(codec.spec(), Codec)
    assert repr(rebuilt) == repr(codec)
    x = _x()
    p1 = codec.encode(x, np.random.default_rng(5))
    p2 = rebuilt.encode(x, np.random.default_rng(5))
    assert sorted(p1) == sorted(p2) and all(np.array_equal(p1[k], p2[k]) for k in p1)


def _tamper(payload, key, value):
    out = dict(payload)
    if value is None:
        out.pop(key)
    else:
        out[key] = value
    return out


BAD = [
    ("identity", "values", np.full(D, np.nan, np.float32), "NaN"),
    ("identity", "values", np.zeros(D, np.float64), "must be float32"),
    ("identity", "values", np.zeros(D - 1, np.float32), "shape"),
    ("int8", "scales", None, "lacks field 'scales'"),
    ("int8", "scales", np.full(40, np.inf, np.float32), "scales"),
    ("int8", "q", np.full(D, -128, np.int8), "-128"),
    ("int8", "extra", np.zeros(1, np.float32), "unexpected payload fields"),
    ("qsgd", "levels", np.full(D, 200, np.uint8), "exceeds 16"),
    ("qsgd", "norm", np.array([np.nan], np.float32), "norm"),
    ("topk_raw_indices", "indices", np.full(501, D + 5, np.uint32), "in range"),
    ("topk_raw_indices", "indices", np.zeros(501, np.uint32), "unique"),
    ("topk", "index_meta", np.array([10**9, 7], np.int64), "impossible"),
    ("sign", "scale", np.array([-1.0], np.float32), ">= 0"),
    ("randomk", "values", np.zeros(5, np.float32), "shape"),
    ("topk_int8", "values.scales", np.array([np.nan], np.float32), "scales"),
    ("float16", "values", np.full(D, np.inf, np.float16), "NaN or Inf"),
    ("bfloat16", "values", np.full(D, 0x7FC0, np.uint16), "NaN or Inf"),
    ("ternary", "keep", np.zeros(3, np.uint8), "shape"),
]


@pytest.mark.parametrize(("name", "key", "value", "match"), BAD)
def test_bad_payloads_are_refused_with_the_reason(name, key, value, match):
    codec = CODECS[name]
    payload = codec.encode(_x(), np.random.default_rng(0))
    with pytest.raises(PayloadError, match=match):
        codec.decode(_tamper(payload, key, value), D)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: BlockQuant(bits=3), "bits"),
        (lambda: BlockQuant(block=1), "block"),
        (lambda: BlockQuant(rounding="up"), "rounding"),
        (lambda: QSGD(levels=0), "levels"),
        (lambda: TopK(fraction=0), "fraction"),
        (lambda: TopK(method="approx"), "method"),
        (lambda: Cast(dtype="int8"), "dtype"),
        (lambda: Chain(stages=[]), "one or more"),
    ],
)
def test_bad_parameters(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_chain_needs_values_from_its_first_stage():
    with pytest.raises(ValueError, match="no float32 'values'"):
        Chain(stages=[SignScale(), BlockQuant()]).encode(_x(), np.random.default_rng(0))
