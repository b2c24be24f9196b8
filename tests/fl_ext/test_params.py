from collections import OrderedDict

import numpy as np
import pytest
import torch

from fl_ext.models import SmallCNN
from fl_ext.params import ParamSpec, get_weights, set_weights


def test_flatten_unflatten_round_trip_and_out_buffer():
    arrays = OrderedDict(
        a=np.arange(6, dtype=np.float32).reshape(2, 3), b=np.array([7.5], dtype=np.float32)
    )
    spec = ParamSpec.of(arrays)
    assert spec.size == 7
    out = torch.full((7,), -1.0)
    flat = spec.flatten(arrays, out=out)
    assert flat.data_ptr() == out.data_ptr()
    assert flat.tolist() == [0, 1, 2, 3, 4, 5, 7.5]
    back = spec.unflatten(flat)
    assert list(back) == ["a", "b"]
    assert all(np.array_equal(back[k], arrays[k]) and back[k].dtype == np.float32 for k in arrays)
    with pytest.raises(ValueError, match="spec needs 7"):
        spec.unflatten(torch.zeros(6))


def test_get_set_weights_round_trip_and_strictness():
    torch.manual_seed(0)
    a, b = (
        SmallCNN(input_shape=(1, 8, 8), num_classes=10),
        SmallCNN(input_shape=(1, 8, 8), num_classes=10),
    )
    set_weights(b, get_weights(a))
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(a(x), b(x))
    set_weights(b, list(get_weights(a).values()))
    with pytest.raises(ValueError, match="got 1 arrays"):
        set_weights(b, [np.zeros(3)])
    wrong = OrderedDict(reversed(get_weights(a).items()))
    with pytest.raises(ValueError, match="differ"):
        set_weights(b, wrong)
