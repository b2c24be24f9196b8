import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from fl_ext.models import MLP, SmallCNN
from fl_ext.models.slicing import SlicePlan
from fl_ext.params import ParamSpec, get_weights, set_weights

MLP_SHAPE = (1, 4, 4)
CNN_SHAPE = (1, 8, 8)


def tiny_mlp(hidden=(8, 6)):
    torch.manual_seed(0)
    return MLP(input_shape=MLP_SHAPE, num_classes=3, hidden=hidden)


def tiny_cnn():
    torch.manual_seed(0)
    return SmallCNN(input_shape=CNN_SHAPE, num_classes=2, channels=(4, 6), hidden=5)


def batch(shape, n=3):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(1))


def keep(width, c):
    return max(1, math.ceil(width * c))


# ------------------------------------------------------------------ the plan found from the graph


def test_default_nets_have_the_expected_hidden_groups():
    mlp = MLP(input_shape=(1, 28, 28), num_classes=10)
    cnn = SmallCNN(input_shape=(1, 28, 28), num_classes=10)
    mplan, cplan = SlicePlan.of(mlp, (1, 28, 28)), SlicePlan.of(cnn, (1, 28, 28))
    assert sorted(mplan.groups.values()) == [200, 200]
    assert sorted(cplan.groups.values()) == [16, 32, 64]
    # first layer's input dim and last layer's output dim (and bias) are untouched
    assert [d.dim for d in mplan.dims["net.1.weight"]] == [0]
    assert [d.dim for d in mplan.dims["net.5.weight"]] == [1]
    assert "net.5.bias" not in mplan.dims
    assert [d.dim for d in cplan.dims["features.0.weight"]] == [0]
    assert [d.dim for d in cplan.dims["head.3.weight"]] == [1]
    assert "head.3.bias" not in cplan.dims
    # the flatten after 32 channels of 7x7 gives the first Linear's in-dim a multiplier of 49
    (out_dim, in_dim) = cplan.dims["head.1.weight"]
    assert cplan.groups[in_dim.group] == 32 and in_dim.multiplier == 49
    assert cplan.groups[out_dim.group] == 64 and out_dim.multiplier == 1
    assert in_dim.group == cplan.dims["features.3.weight"][0].group


def test_cnn_flatten_maps_channel_blocks_by_hw():
    model = tiny_cnn()  # conv 4, conv 6, flatten 6 x 2 x 2 = 24, hidden 5
    plan = SlicePlan.of(model, CNN_SHAPE)
    full = get_weights(model)
    spec = ParamSpec.of(full)
    index = plan.indices(0.5, offset=1)  # conv2: channels (1+{0,1,2}) % 6 = 1,2,3; hidden 1,2,3
    flat = index.flat_index(spec)
    sizes = dict(zip(spec.names, (math.prod(s) for s in spec.shapes), strict=True))
    base = sum(
        sizes[n]
        for n in ("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias")
    )
    # sliced vector: conv1 2x1x3x3 + 2, conv2 3x2x3x3 + 3, then head.1.weight 3 x 12
    start = 2 * 9 + 2 + 3 * 2 * 9 + 3
    cols = [c * 4 + j for c in (1, 2, 3) for j in range(4)]  # channel c -> features 4c .. 4c+3
    hand = [base + r * 24 + col for r in (1, 2, 3) for col in cols]
    np.testing.assert_array_equal(flat[start : start + 36], hand)
    np.testing.assert_array_equal(
        index.slice(full)["head.1.weight"], full["head.1.weight"][np.ix_([1, 2, 3], cols)]
    )


# ------------------------------------------------------------------ identity and consistency


@pytest.mark.parametrize("make,shape", [(tiny_mlp, MLP_SHAPE), (tiny_cnn, CNN_SHAPE)])
@pytest.mark.parametrize("offset", [0, 3])
def test_width_one_is_the_identity(make, shape, offset):
    model = make()
    plan = SlicePlan.of(model, shape)
    index = plan.indices(1.0, offset=offset)
    full = get_weights(model)
    sliced = index.slice(full)
    assert list(sliced) == list(full)
    for name in full:
        np.testing.assert_array_equal(sliced[name], full[name])
    spec = ParamSpec.of(full)
    np.testing.assert_array_equal(index.flat_index(spec), np.arange(spec.size))
    assert index.mask(spec).all()
    x = batch(shape)
    with torch.no_grad():
        assert torch.equal(index.submodel(model)(x), model(x))


def narrow_mlp(ks):
    k1, k2 = ks
    return nn.Sequential(
        nn.Flatten(), nn.Linear(16, k1), nn.ReLU(), nn.Linear(k1, k2), nn.ReLU(), nn.Linear(k2, 3)
    )


def narrow_cnn(ks):
    k1, k2, kh = ks
    return nn.Sequential(
        nn.Conv2d(1, k1, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(k1, k2, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(k2 * 4, kh),
        nn.ReLU(),
        nn.Linear(kh, 2),
    )


@pytest.mark.parametrize(
    "make,shape,narrow,sizes",
    [(tiny_mlp, MLP_SHAPE, narrow_mlp, (8, 6)), (tiny_cnn, CNN_SHAPE, narrow_cnn, (4, 6, 5))],
)
@pytest.mark.parametrize("width", [0.25, 0.5])
@pytest.mark.parametrize("offset", [0, 5])
def test_slice_evaluates_as_its_own_model(make, shape, narrow, sizes, width, offset):
    model = make()
    plan = SlicePlan.of(model, shape)
    index = plan.indices(width, offset=offset)
    sliced = index.slice(get_weights(model))
    hand = narrow(tuple(keep(width, c) for c in sizes))
    set_weights(hand, list(sliced.values()))
    sub = index.submodel(model)
    # the sub-model's own state is the slice, and its size attributes follow
    assert list(get_weights(sub)) == list(sliced)
    for name, array in get_weights(sub).items():
        np.testing.assert_array_equal(array, sliced[name])
    for module in sub.modules():
        if isinstance(module, nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features)
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[:2] == (module.out_channels, module.in_channels)
    x = batch(shape)
    with torch.no_grad():
        expected = hand(x)
        torch.testing.assert_close(sub(x), expected)
        views = index.views(dict(model.named_parameters()))
        torch.testing.assert_close(functional_call(model, views, (x,)), expected)


@pytest.mark.parametrize("make,shape", [(tiny_mlp, MLP_SHAPE), (tiny_cnn, CNN_SHAPE)])
@pytest.mark.parametrize("width,offset", [(0.25, 0), (0.5, 0), (0.5, 4), (0.75, 7)])
def test_flat_index_and_mask_agree(make, shape, width, offset):
    model = make()
    index = SlicePlan.of(model, shape).indices(width, offset=offset)
    full = get_weights(model)
    spec = ParamSpec.of(full)
    sliced = index.slice(full)
    small = ParamSpec.of(sliced)
    flat_index = index.flat_index(spec)
    assert flat_index.dtype == np.int64 and len(flat_index) == small.size
    assert len(np.unique(flat_index)) == small.size
    scattered = torch.zeros(spec.size)
    scattered[torch.from_numpy(flat_index)] = small.flatten(sliced)
    mask = index.mask(spec)
    assert mask.sum() == small.size
    torch.testing.assert_close(
        scattered, spec.flatten(full) * torch.from_numpy(mask), rtol=0, atol=0
    )


# ------------------------------------------------------------------ rolling and nesting


def test_rolling_offsets_shift_wrap_and_cover():
    model = tiny_mlp(hidden=(8, 8))
    plan = SlicePlan.of(model, MLP_SHAPE)
    assert sorted(plan.groups.values()) == [8, 8]
    for g in plan.groups:
        np.testing.assert_array_equal(plan.indices(0.5).channels[g], [0, 1, 2, 3])
        np.testing.assert_array_equal(plan.indices(0.5, offset=2).channels[g], [2, 3, 4, 5])
        np.testing.assert_array_equal(plan.indices(0.5, offset=6).channels[g], [0, 1, 6, 7])
        np.testing.assert_array_equal(plan.indices(0.5, offset=14).channels[g], [0, 1, 6, 7])
        np.testing.assert_array_equal(plan.indices(0.5, offset=-2).channels[g], [0, 1, 6, 7])
    full = get_weights(model)
    spec = ParamSpec.of(full)
    for width in (0.25, 0.5):
        indices = [plan.indices(width, offset=o) for o in range(8)]
        for g in plan.groups:  # every channel of every group is visited
            assert set(np.concatenate([ix.channels[g] for ix in indices])) == set(range(8))
        masks = [ix.mask(spec) for ix in indices]
        assert not masks[0].all()
        covered = spec.unflatten(torch.from_numpy(np.logical_or.reduce(masks).astype(np.float32)))
        for name in full:  # tensors touching at most one hidden group are covered entirely
            if name != "net.3.weight":
                assert covered[name].all(), name
        # hidden-to-hidden weights: both dims roll together, so (i, j) further apart than
        # the window are never held at once (a property of FedRolex's shared offset)
        assert covered["net.3.weight"][0, 4] == 0 and covered["net.3.weight"][4, 4] == 1


def test_rolling_union_covers_every_coordinate_with_one_hidden_group():
    model = tiny_mlp(hidden=(8,))
    plan = SlicePlan.of(model, MLP_SHAPE)
    spec = ParamSpec.of(get_weights(model))
    masks = [plan.indices(0.25, offset=o).mask(spec) for o in range(8)]
    assert not np.logical_or.reduce(masks[:3]).all()
    assert np.logical_or.reduce(masks).all()


@pytest.mark.parametrize("make,shape", [(tiny_mlp, MLP_SHAPE), (tiny_cnn, CNN_SHAPE)])
def test_static_widths_nest(make, shape):
    model = make()
    plan = SlicePlan.of(model, shape)
    spec = ParamSpec.of(get_weights(model))
    m25, m50, m100 = (plan.indices(w).mask(spec) for w in (0.25, 0.5, 1.0))
    assert (m25 <= m50).all() and (m50 <= m100).all()
    assert m25.sum() < m50.sum() < m100.sum()


def test_views_of_a_wider_submodel_nest_and_rolling_needs_full_size():
    model = tiny_cnn()
    plan = SlicePlan.of(model, CNN_SHAPE)
    sub = plan.indices(0.5).submodel(model)
    x = batch(CNN_SHAPE)
    inner = plan.indices(0.25)
    with torch.no_grad():
        out = functional_call(sub, inner.views(dict(sub.named_parameters())), (x,))
        torch.testing.assert_close(out, inner.submodel(model)(x))
    with pytest.raises(ValueError, match="rolling"):
        plan.indices(0.25, offset=1).views(dict(sub.named_parameters()))
    with pytest.raises(ValueError, match="at least"):
        plan.indices(0.75).views(dict(sub.named_parameters()))


def test_views_gradient_is_the_submodel_gradient_inside_and_zero_outside():
    model = tiny_cnn()
    plan = SlicePlan.of(model, CNN_SHAPE)
    index = plan.indices(0.5)
    x, y = batch(CNN_SHAPE), torch.tensor([0, 1, 1])
    params = dict(model.named_parameters())
    loss = nn.functional.cross_entropy(functional_call(model, index.views(params), (x,)), y)
    loss.backward()
    sub = index.submodel(model)
    nn.functional.cross_entropy(sub(x), y).backward()
    full_grads = {n: p.grad.numpy() for n, p in model.named_parameters()}
    sub_grads = {n: p.grad.numpy() for n, p in sub.named_parameters()}
    spec = ParamSpec.of(full_grads)
    flat = spec.flatten(full_grads)
    mask = torch.from_numpy(index.mask(spec))
    assert flat[mask].abs().sum() > 0
    assert torch.count_nonzero(flat[~mask]) == 0
    inside = flat[torch.from_numpy(index.flat_index(spec))]
    torch.testing.assert_close(inside, ParamSpec.of(sub_grads).flatten(sub_grads))


@pytest.mark.parametrize("make,shape", [(tiny_mlp, MLP_SHAPE), (tiny_cnn, CNN_SHAPE)])
def test_param_count_matches_and_grows(make, shape):
    model = make()
    plan = SlicePlan.of(model, shape)
    assert plan.widths_param_count(1.0) == sum(p.numel() for p in model.parameters())
    widths = (0.1, 0.25, 0.5, 0.75, 1.0)
    counts = [plan.widths_param_count(w) for w in widths]
    assert counts == sorted(set(counts))
    for w, count in zip(widths, counts, strict=True):
        assert count == sum(p.numel() for p in plan.indices(w).submodel(model).parameters())


# ------------------------------------------------------------------ other graphs and refusals


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(4, 8)
        self.lin2 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.lin1(x)
        return self.head(self.lin2(torch.relu(h)) + h)


def test_residual_add_merges_groups():
    torch.manual_seed(0)
    model = Residual()
    plan = SlicePlan.of(model, (4,))
    assert plan.groups == {0: 8}
    assert {d.group for ds in plan.dims.values() for d in ds} == {0}
    assert [d.dim for d in plan.dims["lin2.weight"]] == [0, 1]
    assert [d.dim for d in plan.dims["head.weight"]] == [1]
    index = plan.indices(0.5, offset=6)
    kept = torch.tensor(index.channels[0])
    np.testing.assert_array_equal(kept, [0, 1, 6, 7])
    x = batch((4,))
    w1, b1 = model.lin1.weight[kept], model.lin1.bias[kept]
    w2, b2 = model.lin2.weight[kept][:, kept], model.lin2.bias[kept]
    h = x @ w1.T + b1
    expected = (torch.relu(h) @ w2.T + b2 + h) @ model.head.weight[:, kept].T + model.head.bias
    with torch.no_grad():
        torch.testing.assert_close(index.submodel(model)(x), expected)


class InputSkip(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(4, 4)
        self.lin2 = nn.Linear(4, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.lin2(x + self.lin1(x)))


def test_group_added_to_the_input_stays_whole():
    plan = SlicePlan.of(InputSkip(), (4,))
    assert list(plan.groups.values()) == [6]
    assert "lin1.weight" not in plan.dims
    assert [d.dim for d in plan.dims["lin2.weight"]] == [0]


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.head = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.head(torch.relu(self.gn(self.conv(x))).flatten(1))


def test_group_norm_follows_its_group_and_refuses_indivisible_widths():
    torch.manual_seed(0)
    model = GroupNormNet()
    with torch.no_grad():
        model.gn.weight.uniform_(0.5, 1.5)
    plan = SlicePlan.of(model, (1, 4, 4))
    assert [d.dim for d in plan.dims["gn.weight"]] == [0]
    with pytest.raises(ValueError, match=r"'gn'.*0\.25"):
        plan.indices(0.25)  # keeps 2 of 8 channels: not divisible into 4 groups
    index = plan.indices(0.5)
    sub = index.submodel(model)
    assert sub.gn.num_channels == 4 and sub.gn.weight.shape == (4,)
    x = batch((1, 4, 4))
    with torch.no_grad():
        expected = functional_call(model, index.views(dict(model.named_parameters())), (x,))
        torch.testing.assert_close(sub(x), expected)


class BatchNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_batch_norm_statistics_are_sliced_and_counter_untouched():
    torch.manual_seed(0)
    model = BatchNormNet()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    model.bn.num_batches_tracked.fill_(7)
    model.eval()
    plan = SlicePlan.of(model, (1, 4, 4))
    assert {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"} <= set(plan.dims)
    assert "bn.num_batches_tracked" not in plan.dims
    index = plan.indices(0.5, offset=2)
    sub = index.submodel(model)
    assert not sub.training and sub.bn.num_features == 3 and int(sub.bn.num_batches_tracked) == 7
    np.testing.assert_array_equal(
        sub.bn.running_mean.numpy(), model.bn.running_mean.numpy()[[2, 3, 4]]
    )
    x = batch((1, 4, 4))
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        torch.testing.assert_close(sub(x), functional_call(model, index.views(tensors), (x,)))


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1 = nn.Linear(4, 6)
        self.scale = nn.Parameter(torch.ones(6))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.lin1(x) * self.scale)


def test_unknown_tensor_left_whole_is_named_when_a_width_breaks_it():
    model = Scaled()
    plan = SlicePlan.of(model, (4,))
    assert "scale" not in plan.dims
    plan.indices(1.0).submodel(model)  # consistent at full width
    with pytest.raises(ValueError, match="scale"):
        plan.indices(0.5).submodel(model)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3)
        self.depth = nn.Conv2d(4, 4, 3, groups=2)

    def forward(self, x):
        return self.depth(self.stem(x))


def test_grouped_conv_is_refused():
    with pytest.raises(ValueError, match=r"'depth'.*groups=2"):
        SlicePlan.of(Grouped(), (1, 6, 6))


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.lin(x)
        return -self.lin(x)


def test_untraceable_model_is_refused():
    with pytest.raises(ValueError, match="Branchy"):
        SlicePlan.of(Branchy(), (4,))


@pytest.mark.parametrize("width", [0, 0.0, -0.5, 1.5, float("nan"), True])
def test_bad_widths_are_refused(width):
    plan = SlicePlan.of(tiny_mlp(), MLP_SHAPE)
    with pytest.raises(ValueError, match=re.escape(repr(width))):
        plan.indices(width)
    with pytest.raises(ValueError, match=re.escape(repr(width))):
        plan.widths_param_count(width)


def test_slice_refuses_arrays_that_are_not_full_size():
    model = tiny_mlp()
    plan = SlicePlan.of(model, MLP_SHAPE)
    half = plan.indices(0.5).slice(get_weights(model))
    with pytest.raises(ValueError, match=re.escape("net.1.weight")):
        plan.indices(0.25).slice(half)
