import numpy as np
import pytest

from fl_ext.data import Digits, Mnist5k
from fl_ext.data.datasets import content_hash, stratified_split


def test_mnist5k_is_the_real_balanced_subset():
    split = Mnist5k().load()
    assert split.input_shape == (1, 28, 28)
    assert len(split.train) == 4000 and len(split.test) == 1000
    assert np.bincount(split.train.y).tolist() == [400] * 10
    assert np.bincount(split.test.y).tolist() == [100] * 10
    assert split.train.x.dtype == np.float32
    assert 0.0 <= split.train.x.min() and split.train.x.max() <= 1.0
    # real digits, not noise: a mean image of class 1 is brighter in the middle column
    ones = split.train.x[split.train.y == 1].mean(axis=0)[0]
    assert ones[:, 13:15].mean() > 3 * ones[:, :5].mean()


def test_digits_and_hash_is_stable_and_content_sensitive():
    a, b = Digits().load(), Digits().load()
    assert a.input_shape == (1, 8, 8) and a.num_classes == 10
    assert a.content_hash == b.content_hash and len(a.content_hash) == 64
    x, y = np.zeros((3, 4), np.uint8), np.arange(3)
    y2 = y.copy()
    y2[0] = 1
    assert content_hash(x, y) != content_hash(x, y2)


def test_split_is_deterministic_disjoint_and_stratified():
    y = np.repeat(np.arange(5), 20)
    tr1, te1 = stratified_split(y, 0.25, seed=7)
    tr2, te2 = stratified_split(y, 0.25, seed=7)
    assert np.array_equal(tr1, tr2) and np.array_equal(te1, te2)
    assert not set(tr1) & set(te1) and len(tr1) + len(te1) == 100
    assert np.bincount(y[te1]).tolist() == [5] * 5


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        Mnist5k(test_fraction=fraction)


def test_root_set_is_carved_from_the_held_out_side():
    plain, rooted = Digits().load(), Digits(root_size=50).load()
    assert rooted.root is not None and len(rooted.root) == 50 and plain.root is None
    assert len(rooted.test) == len(plain.test) - 50
    assert np.array_equal(rooted.train.x, plain.train.x)  # clients' side unchanged
    test_rows = {r.tobytes() for r in plain.test.x}
    assert all(r.tobytes() in test_rows for r in rooted.root.x)
    with pytest.raises(ValueError, match="root_size"):
        Digits(root_size=-1)
    with pytest.raises(ValueError, match="leaves no test examples"):
        Digits(root_size=10_000).load()
