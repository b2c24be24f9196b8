import pytest
import torch

from fl_ext.models import MLP, SmallCNN


@pytest.mark.parametrize("cls", [MLP, SmallCNN])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8), (3, 16, 12)])
def test_output_shape(cls, shape):
    model = cls(input_shape=shape, num_classes=10)
    assert model(torch.zeros(5, *shape)).shape == (5, 10)


def test_no_batchnorm_so_every_state_entry_is_trainable():
    model = SmallCNN(input_shape=(1, 28, 28), num_classes=10)
    assert {k for k, _ in model.named_parameters()} == set(model.state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_shape": (28, 28), "num_classes": 10},
        {"input_shape": (1, 28, 28), "num_classes": 1},
        {"input_shape": (1, 2, 2), "num_classes": 10, "channels": (4, 4)},
        {"input_shape": (1, 8, 8), "num_classes": 10, "channels": (0,)},
    ],
)
def test_cnn_rejects_bad_shapes(kwargs):
    with pytest.raises(ValueError):
        SmallCNN(**kwargs)


def test_mlp_rejects_bad_hidden():
    with pytest.raises(ValueError, match="hidden"):
        MLP(input_shape=(1, 8, 8), num_classes=10, hidden=(0,))
