import random

import numpy as np
import pytest
import torch

from fl_ext.rng_state import restore_rng, rng_state


@pytest.mark.parametrize(
    ("make", "draw"),
    [
        (lambda: random.Random(3), lambda r: [r.random() for _ in range(5)]),
        (lambda: np.random.default_rng(3), lambda r: r.random(5).tolist()),
        (lambda: torch.Generator().manual_seed(3), lambda r: torch.rand(5, generator=r).tolist()),
    ],
)
def test_a_restored_generator_draws_what_the_original_would(make, draw):
    import json

    rng = make()
    draw(rng)
    snapshot = json.loads(json.dumps(rng_state(rng)))  # survives JSON
    expected = draw(rng)
    other = make()
    restore_rng(other, snapshot)
    assert draw(other) == expected


def test_a_snapshot_of_another_kind_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        restore_rng(random.Random(), rng_state(np.random.default_rng(0)))
    with pytest.raises(TypeError):
        rng_state(object())
