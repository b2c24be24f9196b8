import subprocess
import sys

import numpy as np
import pytest
import torch

from fl_ext.models import MLP, SmallCNN
from fl_ext.models.lora import (
    LoraSpec,
    adapter_bytes,
    adapter_state,
    add_adapters,
    aggregate_adapter_states,
    backbone_bytes,
    fedavg_ab,
    ffa_mean,
    flexlora,
    flexlora_states,
    load_adapter_state,
    normalise_weights,
    product_mean,
    rank_for_capability,
    target_dims,
    truncate,
)

SHAPE = (1, 8, 8)


def mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(input_shape=SHAPE, num_classes=10, hidden=(32, 32))


def cnn(seed=0):
    torch.manual_seed(seed)
    return SmallCNN(input_shape=SHAPE, num_classes=10, channels=(4, 8), hidden=16)


def randomise_b(model, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen))


def factors(rng, n, out, inn, r):
    return [rng.standard_normal((r, inn)) for _ in range(n)], [
        rng.standard_normal((out, r)) for _ in range(n)
    ]


# ----------------------------------------------------------------------------- model side


def test_state_names_and_peft_orientation():
    model = add_adapters(mlp(), LoraSpec(rank=4, alpha=8.0))
    state = model.state_dict()
    assert state["net.1.lora_A.default.weight"].shape == (4, 64)  # [r, in]
    assert state["net.1.lora_B.default.weight"].shape == (32, 4)  # [out, r]
    assert "net.1.base_layer.weight" in state and "net.1.weight" not in state
    assert state["net.5.lora_B.default.weight"].shape == (10, 4)  # the last layer is adapted too


@pytest.mark.parametrize("make", [mlp, cnn])
def test_output_equals_base_plus_scaled_ba(make):
    spec = LoraSpec(rank=3, alpha=5.0)
    base = make()
    model = add_adapters(make(), spec)
    randomise_b(model)
    # the adapted model == the backbone with each weight moved by s * B @ A (conv: A flattened)
    merged = make()
    with torch.no_grad():
        modules = dict(model.named_modules())
        for name, (out, inn) in target_dims(base).items():
            a = modules[name].lora_A["default"].weight.reshape(spec.rank, inn)
            b = modules[name].lora_B["default"].weight.reshape(out, spec.rank)
            w = dict(merged.named_modules())[name].weight
            w += (spec.scaling * b @ a).reshape(w.shape)
    x = torch.randn(7, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(model(x), merged(x), atol=1e-5)
        assert not torch.allclose(model(x), base(x), atol=1e-3)


def test_single_linear_output_is_base_plus_x_sba_t():
    spec = LoraSpec(rank=2, alpha=3.0, targets=("net.5",))
    model = add_adapters(mlp(), spec)
    randomise_b(model)
    layer = model.net[5]
    h = torch.randn(4, 32)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        expected = layer.base_layer(h) + h @ (spec.scaling * b @ a).T
        assert torch.allclose(layer(h), expected, atol=1e-6)


@pytest.mark.parametrize("train_a", [True, False])
def test_backbone_frozen_only_adapters_trainable(train_a):
    model = add_adapters(cnn(), LoraSpec(rank=2, train_a=train_a))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n in model.state_dict() if ".lora_B." in n or (train_a and ".lora_A." in n)}
    assert trainable == expected and expected


def test_b_starts_at_zero_so_adapted_equals_backbone():
    base = cnn()
    model = add_adapters(cnn(), LoraSpec(rank=4))
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))
    assert all(not v.any() for k, v in model.state_dict().items() if ".lora_B." in k)


def test_ffa_a_is_seeded_and_identical_across_parties():
    spec = LoraSpec(rank=4, train_a=False, seed=7)
    torch.manual_seed(123)
    m1 = add_adapters(mlp(seed=1), spec)
    torch.manual_seed(999)  # the global RNG must not matter
    m2 = add_adapters(mlp(seed=2), spec)
    a1 = {k: v for k, v in m1.state_dict().items() if ".lora_A." in k}
    a2 = {k: v for k, v in m2.state_dict().items() if ".lora_A." in k}
    assert a1.keys() == a2.keys() and a1
    assert all(torch.equal(a1[k], a2[k]) for k in a1)
    other = add_adapters(mlp(), LoraSpec(rank=4, train_a=False, seed=8)).state_dict()
    assert not torch.equal(other["net.1.lora_A.default.weight"], a1["net.1.lora_A.default.weight"])


def test_add_adapters_leaves_global_rng_alone():
    model = mlp()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    add_adapters(model, LoraSpec(rank=2))
    assert torch.equal(torch.rand(3), expected)


def test_adapter_state_round_trip():
    spec = LoraSpec(rank=3)
    src = add_adapters(cnn(), spec)
    randomise_b(src, seed=4)
    state = adapter_state(src)
    names = [k for k in src.state_dict() if ".lora_" in k]
    assert list(state) == names  # stable: state-dict order, A then B per module
    dst = add_adapters(cnn(), LoraSpec(rank=3, seed=1))
    load_adapter_state(dst, state)
    assert all(np.array_equal(v, adapter_state(dst)[k]) for k, v in state.items())
    x = torch.randn(3, *SHAPE)
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_load_adapter_state_is_strict():
    model = add_adapters(mlp(), LoraSpec(rank=2))
    state = adapter_state(model)
    missing = dict(list(state.items())[1:])
    with pytest.raises(ValueError, match="missing"):
        load_adapter_state(model, missing)
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state(model, {**state, "extra.lora_B.default.weight": np.zeros(1)})
    key = next(iter(state))
    with pytest.raises(ValueError, match="shape"):
        load_adapter_state(model, {**state, key: np.zeros((3, 3), np.float32)})
    bad = state[key].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        load_adapter_state(model, {**state, key: bad})


def test_ffa_state_has_only_b_and_half_the_bytes_on_square_layers():
    torch.manual_seed(0)
    square = MLP(input_shape=(1, 4, 8), num_classes=32, hidden=(32,))  # 32x32 layers only
    ffa = adapter_state(add_adapters(square, LoraSpec(rank=4, train_a=False)))
    torch.manual_seed(0)
    square = MLP(input_shape=(1, 4, 8), num_classes=32, hidden=(32,))
    full = adapter_state(add_adapters(square, LoraSpec(rank=4)))
    assert ffa and all(".lora_B." in k for k in ffa)
    assert adapter_bytes(ffa) * 2 == adapter_bytes(full)


def test_adapter_bytes_far_below_backbone_bytes():
    model = add_adapters(MLP(input_shape=(1, 28, 28), num_classes=10), LoraSpec(rank=4))
    up = adapter_bytes(adapter_state(model))
    full = backbone_bytes(model)
    assert full == sum(
        p.numel() * 4 for p in MLP(input_shape=(1, 28, 28), num_classes=10).parameters()
    )
    assert up / full < 0.05


@pytest.mark.parametrize("train_a", [True, False])
def test_local_fine_tune_changes_only_adapters(train_a):
    model = add_adapters(cnn(), LoraSpec(rank=2, train_a=train_a))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, *SHAPE, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        assert moved == (".lora_B." in k or (train_a and ".lora_A." in k)), k


def test_rank_for_capability_picks_largest_fitting():
    model = mlp()
    per_rank = sum(o + i for o, i in target_dims(model).values())  # values per unit of rank
    mb = lambda r: r * per_rank * 4 * 4 / 2**20  # noqa: E731
    assert rank_for_capability(mb(8), model=model) == 8
    assert rank_for_capability(mb(8) * 0.99, model=model) == 4
    assert rank_for_capability(1e6, model=model) == 16
    with pytest.raises(ValueError, match="memory_mb"):
        rank_for_capability(mb(2) * 0.5, model=model)
    with pytest.raises(ValueError, match="memory_mb"):
        rank_for_capability(0.0, model=model)


def test_fl_ext_models_import_stays_cheap():
    code = "import sys, fl_ext.models, fl_ext.models.lora; print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- aggregation math


def test_ffa_shared_a_is_exact():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 12))
    bs = [rng.standard_normal((9, 4)) for _ in range(5)]
    w = normalise_weights([3, 1, 4, 1, 5])
    lhs = ffa_mean(bs, weights=w) @ a
    rhs = product_mean([a] * 5, bs, weights=w, scaling=1.0)
    assert np.max(np.abs(lhs - rhs)) < 1e-12


def test_fedavg_ab_is_inexact():
    rng = np.random.default_rng(1)
    as_, bs = factors(rng, 4, 10, 12, 3)
    w = normalise_weights([1, 2, 3, 4])
    a, b = fedavg_ab(as_, bs, weights=w)
    exact = product_mean(as_, bs, weights=w, scaling=1.0)
    assert np.linalg.norm(b @ a - exact) / np.linalg.norm(exact) > 1e-3


def test_product_mean_matches_float64_reference_with_scaling_and_torch_inputs():
    rng = np.random.default_rng(2)
    as_, bs = factors(rng, 3, 6, 7, 2)
    w = np.array([0.2, 0.3, 0.5])
    ref = sum(wi * 2.5 * (b @ a) for wi, a, b in zip(w, as_, bs))
    torch_as = [torch.from_numpy(a).float() for a in as_]
    got = product_mean(as_, bs, weights=w, scaling=2.5)
    assert got.dtype == np.float64 and np.max(np.abs(got - ref)) < 1e-12
    got32 = product_mean(torch_as, bs, weights=w, scaling=2.5)
    assert np.allclose(got32, ref, atol=1e-5)


def test_truncate_is_best_rank_r_and_respects_scaling():
    rng = np.random.default_rng(3)
    delta = rng.standard_normal((9, 6))
    sv = np.linalg.svd(delta, compute_uv=False)
    for r in (1, 3, 5):
        a, b = truncate(delta, rank=r, scaling=0.5)
        assert a.shape == (r, 6) and b.shape == (9, r)
        err = np.linalg.norm(delta - 0.5 * b @ a)
        assert abs(err - np.sqrt(np.sum(sv[r:] ** 2))) < 1e-10
    a, b = truncate(delta, rank=6, scaling=2.0)
    assert np.max(np.abs(2.0 * b @ a - delta)) < 1e-10


def test_truncate_pads_when_rank_exceeds_matrix_rank():
    rng = np.random.default_rng(4)
    delta = rng.standard_normal((3, 5))
    a, b = truncate(delta, rank=8, scaling=1.0)
    assert a.shape == (8, 5) and b.shape == (3, 8)
    assert not a[3:].any() and not b[:, 3:].any()
    assert np.max(np.abs(b @ a - delta)) < 1e-10


def test_flexlora_heterogeneous_ranks():
    rng = np.random.default_rng(5)
    alpha = 8.0
    as_ = [rng.standard_normal((r, 7)) for r in (2, 4, 8)]
    bs = [rng.standard_normal((6, r)) for r in (2, 4, 8)]
    w = normalise_weights([1, 1, 2])
    delta = sum(wi * (alpha / a.shape[0]) * (b @ a) for wi, a, b in zip(w, as_, bs))
    sv = np.linalg.svd(delta, compute_uv=False)
    outs = flexlora(as_, bs, weights=w, alpha=alpha)
    for r, (a, b) in zip((2, 4, 8), outs):
        assert a.shape == (r, 7) and b.shape == (6, r)
        err = np.linalg.norm(delta - (alpha / r) * b @ a)
        assert abs(err - np.sqrt(np.sum(sv[r:] ** 2))) < 1e-10


def test_state_level_ffa_is_exact_and_flexlora_states_load():
    spec = LoraSpec(rank=2, train_a=False, seed=3)
    clients = [add_adapters(cnn(), spec) for _ in range(3)]
    for i, m in enumerate(clients):
        randomise_b(m, seed=10 + i)
    w = normalise_weights([1, 2, 3])
    mean = aggregate_adapter_states([adapter_state(m) for m in clients], weights=w, mode="ffa")
    server = add_adapters(cnn(), spec)
    load_adapter_state(server, mean)
    modules = [dict(m.named_modules()) for m in clients]
    smods = dict(server.named_modules())
    for name, (out, inn) in target_dims(server).items():
        get = lambda mods: (  # noqa: E731
            mods[name].lora_A["default"].weight.detach().double().reshape(-1, inn).numpy(),
            mods[name].lora_B["default"].weight.detach().double().reshape(out, -1).numpy(),
        )
        as_, bs = zip(*(get(mods) for mods in modules))
        a, b = get(smods)
        exact = product_mean(as_, bs, weights=w, scaling=spec.scaling)
        assert np.allclose(spec.scaling * b @ a, exact, atol=1e-5)
    # FlexLoRA on A-and-B states with different ranks, back into models of each rank
    specs = [LoraSpec(rank=r, alpha=4.0) for r in (1, 2, 4)]
    hetero = [add_adapters(cnn(), s) for s in specs]
    for i, m in enumerate(hetero):
        randomise_b(m, seed=20 + i)
    outs = flexlora_states([adapter_state(m) for m in hetero], weights=w, alpha=4.0)
    for s, st in zip(specs, outs):
        target = add_adapters(cnn(), s)
        load_adapter_state(target, st)
        assert all(v.dtype == np.float32 for v in st.values())


def test_aggregate_states_rejects_wrong_mode():
    model = add_adapters(mlp(), LoraSpec(rank=2))
    with pytest.raises(ValueError, match="ffa"):
        aggregate_adapter_states([adapter_state(model)], weights=[1.0], mode="ffa")


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rank": 0}, "rank must be an integer >= 1, got 0"),
        ({"alpha": 0.0}, r"alpha must be a finite number > 0, got 0\.0"),
        ({"alpha": -1.0}, r"got -1\.0"),
        ({"targets": ()}, "targets"),
        ({"targets": ("a", "a")}, "repeat"),
        ({"seed": -1}, "seed"),
    ],
)
def test_invalid_spec(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraSpec(**kwargs)


def test_unknown_or_unsupported_target():
    with pytest.raises(ValueError, match=r"'net\.9'"):
        add_adapters(mlp(), LoraSpec(targets=("net.9",)))
    with pytest.raises(ValueError, match=r"'net\.2' is a ReLU"):
        add_adapters(mlp(), LoraSpec(targets=("net.2",)))
    with pytest.raises(ValueError, match="already has LoRA"):
        add_adapters(add_adapters(mlp(), LoraSpec(rank=2)), LoraSpec(rank=2))


def test_invalid_weights_and_ranks():
    rng = np.random.default_rng(6)
    as_, bs = factors(rng, 2, 3, 3, 1)
    with pytest.raises(ValueError, match="sum to 1"):
        product_mean(as_, bs, weights=[0.5, 0.6], scaling=1.0)
    with pytest.raises(ValueError, match=r"-0\.5"):
        fedavg_ab(as_, bs, weights=[1.5, -0.5])
    with pytest.raises(ValueError, match="2 clients"):
        ffa_mean(bs, weights=[1.0])
    with pytest.raises(ValueError, match="rank must be an integer >= 1, got 0"):
        truncate(np.eye(3), rank=0, scaling=1.0)
    with pytest.raises(ValueError, match="scaling"):
        truncate(np.eye(3), rank=1, scaling=0.0)
    with pytest.raises(ValueError, match="counts"):
        normalise_weights([0, 0])
