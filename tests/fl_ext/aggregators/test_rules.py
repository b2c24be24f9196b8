"""Every rule against its float64 reference, on random and adversarial inputs."""

import numpy as np
import pytest
import torch

from fl_ext.aggregators import (
    AggregatorState,
    Bulyan,
    CenteredClipping,
    CoordinateMedian,
    FLTrust,
    GeometricMedian,
    Krum,
    MultiKrum,
    NotEnoughInputs,
    RobustAggregation,
    TrimmedMean,
    WeightedMean,
    pairwise_sq_distances,
)
from fl_ext.preagg import ARC, NNM, Bucketing, StaticClipping

from . import reference as ref

N, D, F = 15, 301, 3


def _gen(seed):
    return np.random.default_rng(seed)


def inputs(kind, n=N, d=D, seed=0):
    rng = _gen(seed)
    x = rng.normal(size=(n, d))
    if kind == "huge":
        x[:F] = rng.normal(size=(F, d)) * 1e30
    elif kind == "tiny":
        x = x * 1e-30
    elif kind == "duplicated":
        x[5:10] = x[4]
    elif kind == "huge_and_duplicated":  # Byzantine rows 1e30 away, honest mode exactly repeated
        x[:F] = rng.normal(size=(F, d)) * 1e30
        x[5:12] = x[4]
    elif kind == "near_identical":
        x = 1e3 + rng.normal(size=(1, d)) * 10 + rng.normal(size=(n, d)) * 1e-3
    elif kind == "offset":
        x = x + 1e4
    return torch.tensor(x, dtype=torch.float32)


KINDS = ["random", "huge", "tiny", "duplicated", "huge_and_duplicated", "near_identical", "offset"]

RULES = {
    "mean": (WeightedMean, lambda x: x.mean(axis=0)),
    "median": (lambda: CoordinateMedian(f=F), ref.median),
    "trimmed_mean": (lambda: TrimmedMean(f=F), lambda x: ref.trimmed_mean(x, F)),
    "krum": (lambda: Krum(f=F), lambda x: ref.krum(x, F)),
    "multikrum": (lambda: MultiKrum(f=F), lambda x: ref.multikrum(x, F)),
    "multikrum_m5": (lambda: MultiKrum(f=F, m=5), lambda x: ref.multikrum(x, F, 5)),
    "bulyan": (lambda: Bulyan(f=F), lambda x: ref.bulyan(x, F)),
    "geometric_median": (lambda: GeometricMedian(f=F), ref.geometric_median),
    "centered_clipping": (
        lambda: CenteredClipping(f=F, tau=2.0, iterations=3),
        lambda x: ref.centered_clipping(x, np.zeros(x.shape[1]), 2.0, 3),
    ),
    "centered_clipping_direct": (  # <= 2 iterations take the two-pass form
        lambda: CenteredClipping(f=F, tau=0.01, iterations=2),
        lambda x: ref.centered_clipping(x, np.zeros(x.shape[1]), 0.01, 2),
    ),
}


def _close(got, want, rtol=1e-5):
    got = got.double().numpy()
    scale = max(float(np.abs(want).max()), np.finfo(np.float64).tiny)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(RULES))
def test_rule_matches_float64_reference(name, kind):
    make, reference = RULES[name]
    x = inputs(kind)
    before = x.clone()
    got = make()(x)
    assert got.shape == (D,) and got.dtype == torch.float32
    assert torch.equal(x, before), "input modified"
    _close(got, reference(x.double().numpy()))


@pytest.mark.parametrize("kind", KINDS)
def test_distances_are_exact(kind):
    x = inputs(kind)
    got = pairwise_sq_distances(x).numpy()
    want = ref.dist(x.double().numpy())
    scale = want.max()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * scale)
    assert np.array_equal(got, got.T)  # bit-for-bit: Krum's ties by position rely on it


def test_flower_style_gram_would_be_wrong_here():
    """The case that breaks fp32 Gram distances: our Krum picks what the reference picks."""
    x = inputs("near_identical")
    sq = (x * x).sum(1)
    gram32 = sq[:, None] + sq[None, :] - 2 * x @ x.T
    want = ref.dist(x.double().numpy())
    off = ~np.eye(N, dtype=bool)
    assert np.abs(gram32.numpy()[off] - want[off]).max() > 0.5 * want[off].max()  # garbage
    _close(Krum(f=F)(x), ref.krum(x.double().numpy(), F))


@pytest.mark.parametrize("name", [k for k in RULES if k != "centered_clipping"])
def test_permutation_invariant(name):
    make, _ = RULES[name]
    x = inputs("random")
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(1))
    _close(make()(x[perm]), make()(x).double().numpy(), rtol=1e-5)


@pytest.mark.parametrize("name", ["median", "trimmed_mean", "krum", "multikrum", "bulyan"])
def test_f_byzantine_rows_keep_output_in_honest_range(name):
    make, _ = RULES[name]
    x = inputs("random")
    honest = x[F:].clone()
    for attack in (1e6, -1e6):
        x[:F] = attack
        got = make()(x)
        assert bool(
            (got >= honest.min(0).values - 1e-6).all()
            and (got <= honest.max(0).values + 1e-6).all()
        )


def test_geometric_median_and_cc_bounded_under_attack():
    x = inputs("random")
    honest_mean = x[F:].double().mean(0)
    spread = float((x[F:].double() - honest_mean).norm(dim=1).max())
    x[:F] = 1e6
    assert float((GeometricMedian(f=F)(x).double() - honest_mean).norm()) < spread
    state = AggregatorState(center=honest_mean.float())
    out = CenteredClipping(f=F, tau=1.0, iterations=1)(x, state=state)
    assert float((out.double() - honest_mean).norm()) <= 1.0 + 1e-6  # each step moves <= tau


def test_weighted_geometric_median():
    x = inputs("random")
    w = torch.rand(N, generator=torch.Generator().manual_seed(3)) + 0.1
    got = GeometricMedian(weighted=True)(x, w)
    _close(got, ref.geometric_median(x.double().numpy(), w.double().numpy()))
    unweighted = GeometricMedian()(x, w)  # weights ignored unless weighted=True
    _close(unweighted, ref.geometric_median(x.double().numpy()))


def test_centered_clipping_state_is_explicit():
    x = inputs("random")
    state = AggregatorState()
    rule = CenteredClipping(tau=1.0, iterations=2)
    first = rule(x, state=state)
    assert torch.equal(state.center, first)
    second = rule(x, state=state)
    _close(second, ref.centered_clipping(x.double().numpy(), first.double().numpy(), 1.0, 2))
    assert torch.equal(rule(x), first)  # no state passed: starts from zeros, nothing kept


def test_fltrust():
    x = inputs("random")
    g0 = x[F:].double().mean(0).float() + 0.1
    x[0] = -g0 * 100  # opposite direction: trust 0
    got = FLTrust()(x, state=AggregatorState(reference=g0))
    _close(got, ref.fltrust(x.double().numpy(), g0.double().numpy()))
    with pytest.raises(ValueError, match="reference"):
        FLTrust()(x)


PRE = {
    "nnm": (lambda: NNM(f=F), lambda x: ref.nnm(x, F)),
    "clip": (lambda: StaticClipping(c=3.0), lambda x: ref.clip(x, 3.0)),
    "arc": (lambda: ARC(f=F), lambda x: ref.arc(x, F)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(PRE))
def test_preaggregators_match_reference(name, kind):
    make, reference = PRE[name]
    x = inputs(kind)
    before = x.clone()
    got = make()(x)
    assert torch.equal(x, before)
    _close(got, reference(x.double().numpy()))


def test_bucketing_averages_a_seeded_partition():
    x = inputs("random")
    state = AggregatorState(round=4)
    out = Bucketing(s=4, seed=7)(x, state)
    again = Bucketing(s=4, seed=7)(x, AggregatorState(round=4))
    other = Bucketing(s=4, seed=7)(x, AggregatorState(round=5))
    assert out.shape == (4, D) and torch.equal(out, again) and not torch.equal(out, other)
    # bucket means of a partition of the rows: their size-weighted mean is the overall mean
    sizes = torch.tensor([4, 4, 4, 3], dtype=torch.float64)
    _close((sizes[:, None] * out.double()).sum(0) / N, x.double().mean(0).numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    ("rule", "n_ok", "message"),
    [
        (CoordinateMedian(f=3), 7, "n >= 2f \\+ 1"),
        (TrimmedMean(f=3), 7, "n >= 2f \\+ 1"),
        (Krum(f=3), 9, "n > 2f \\+ 2"),
        (MultiKrum(f=2, m=8), 8, "m = 8"),
        (Bulyan(f=3), 15, "n >= 4f \\+ 3"),
        (GeometricMedian(f=3), 7, "n >= 2f \\+ 1"),
        (CenteredClipping(f=3), 7, "n >= 2f \\+ 1"),
    ],
)
def test_too_few_inputs_is_a_clear_error(rule, n_ok, message):
    assert rule.min_inputs() == n_ok
    rule(inputs("random", n=n_ok))
    with pytest.raises(NotEnoughInputs, match=message):
        rule(inputs("random", n=n_ok - 1))


def test_pipeline_counts_rows_after_bucketing_and_drops_weights():
    pipe = RobustAggregation(rule=Krum(f=2), preagg=[Bucketing(s=2)])
    assert pipe.min_inputs() == 13  # ceil(13/2) = 7 = 2f + 3
    with pytest.raises(NotEnoughInputs, match="Bucketing -> Krum\\(f=2\\) needs at least 13"):
        pipe(inputs("random", n=12))
    nnm_mean = RobustAggregation(rule=WeightedMean(), preagg=[NNM(f=F)])
    x = inputs("random")
    _close(nnm_mean(x, torch.rand(N) + 1), ref.nnm(x.double().numpy(), F).mean(0))


@pytest.mark.parametrize(
    "factory",
    [
        lambda: Krum(f=-1),
        lambda: Krum(f=1.5),
        lambda: MultiKrum(f=1, m=0),
        lambda: GeometricMedian(nu=0),
        lambda: GeometricMedian(max_iter=0),
        lambda: CenteredClipping(tau=0),
        lambda: StaticClipping(c=-1),
        lambda: Bucketing(s=0),
        lambda: ARC(f=-2),
    ],
)
def test_bad_parameters(factory):
    with pytest.raises(ValueError):
        factory()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_rows_are_refused(bad):
    x = inputs("random")
    x[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        CoordinateMedian(f=1)(x)


def test_device_cpu_and_auto_give_the_same_result_and_keep_the_state_home():
    x = inputs("random")
    state = AggregatorState(center=torch.ones(D))
    out_cpu = RobustAggregation(rule=CenteredClipping(f=F, tau=1.0), device="cpu")(
        x, None, AggregatorState(center=torch.ones(D))
    )
    out_auto = RobustAggregation(rule=CenteredClipping(f=F, tau=1.0), device="auto")(x, None, state)
    assert torch.allclose(out_cpu, out_auto) and out_auto.device == x.device
    assert state.center is not None and state.center.device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU on this machine")
@pytest.mark.parametrize("name", list(RULES))
def test_cuda_matches_cpu(name):
    make, _ = RULES[name]
    x = inputs("near_identical")
    cpu = RobustAggregation(rule=make(), device="cpu")(x)
    gpu = RobustAggregation(rule=make(), device="cuda")(x)
    _close(gpu, cpu.double().numpy())
