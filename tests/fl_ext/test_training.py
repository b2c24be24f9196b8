import numpy as np
import pytest
import torch

from fl_ext.data import ArrayDataset, Digits
from fl_ext.models import MLP
from fl_ext.params import get_weights
from fl_ext.training import TrainConfig, evaluate, seed_for, train_local


@pytest.fixture(scope="module")
def digits():
    return Digits().load()


def _model():
    torch.manual_seed(0)
    return MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(32,))


def test_training_learns_and_is_deterministic(digits):
    m1, m2 = _model(), _model()
    _, acc0 = evaluate(m1, digits.test)
    cfg = TrainConfig(epochs=3, lr=0.1, momentum=0.9, seed=5)
    s1 = train_local(m1, digits.train, cfg)
    s2 = train_local(m2, digits.train, cfg)
    assert s1 == s2
    _loss, acc = evaluate(m1, digits.test)
    assert acc > 0.85 > acc0
    assert s1.num_examples == len(digits.train)
    assert s1.steps == 3 * int(np.ceil(len(digits.train) / 32))


def test_proximal_term_keeps_weights_closer_to_start(digits):
    def drift(mu):
        model = _model()
        start = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        train_local(model, digits.train, TrainConfig(epochs=2, lr=0.1, proximal_mu=mu, seed=1))
        return float(
            torch.linalg.vector_norm(
                torch.cat([p.detach().flatten() for p in model.parameters()]) - start
            )
        )

    assert drift(1.0) < 0.8 * drift(0.0)


def test_proximal_gradient_matches_autograd_of_the_penalty():
    """Two full-batch steps equal plain SGD on CE + mu/2 ||w - w0||^2, in float64."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 1, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 0, 1])
    ours = MLP(input_shape=(1, 2, 2), num_classes=2, hidden=(3,)).double()
    ref = MLP(input_shape=(1, 2, 2), num_classes=2, hidden=(3,)).double()
    ref.load_state_dict(ours.state_dict())
    w0 = [p.detach().clone() for p in ref.parameters()]
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        penalty = sum(((p - a) ** 2).sum() for p, a in zip(ref.parameters(), w0, strict=True))
        (torch.nn.functional.cross_entropy(ref(x), y) + 0.25 * penalty).backward()
        opt.step()
    data = ArrayDataset(x.numpy(), y.numpy())
    train_local(ours, data, TrainConfig(epochs=2, batch_size=4, lr=0.1, proximal_mu=0.5))
    for p, q in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs",
    [{"epochs": 0}, {"batch_size": 0}, {"lr": 0}, {"momentum": 1.0}, {"proximal_mu": -1}],
)
def test_bad_train_config(kwargs):
    with pytest.raises(ValueError):
        TrainConfig(**kwargs)


def test_seed_for_is_stable_and_distinct():
    assert seed_for(0, 1, 2) == seed_for(0, 1, 2)
    assert len({seed_for(0, r, p) for r in range(10) for p in range(10)}) == 100
    assert 0 <= seed_for(5, 5) < 2**31


def test_weights_are_float32_arrays():
    assert all(a.dtype == np.float32 for a in get_weights(_model()).values())
