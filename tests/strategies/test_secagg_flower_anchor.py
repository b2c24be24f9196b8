"""The bench anchor: Flower's own SecAgg+ run in process gives the plain mean (n=5, d=1000)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.secagg_flower import (
    FlowerSecAggHaltedError,
    quantization_step,
    run_flower_secaggplus,
)

N, D = 5, 1000
PARAMS = {
    "num_shares": 5,
    "threshold": 3,
    "clipping_range": 1.0,
    "quantization_range": 2**8 - 1,
    "modulus_range": 2**32,
}


def _vectors() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.uniform(-0.5, 0.5, D).astype(np.float32) for _ in range(N)]


@pytest.mark.parametrize("drop", [(), (1,)], ids=["no-drop", "one-drop"])
def test_flower_secaggplus_gives_the_plain_mean(drop: tuple[int, ...]) -> None:
    vectors = _vectors()
    res = run_flower_secaggplus(vectors=vectors, drop_after_shares=drop, **PARAMS)

    assert res.survivors == [i for i in range(N) if i not in drop]
    plain = np.mean(np.stack([vectors[i] for i in res.survivors]), axis=0)
    assert res.aggregate.shape == (D,)
    # stochastic rounding: each client is off by under one step, so is their mean
    step = quantization_step(PARAMS["clipping_range"], PARAMS["quantization_range"])
    assert np.abs(res.aggregate - plain).max() <= step + 1e-9
    assert np.abs(res.aggregate - plain).mean() < step / 2

    stages = ["setup", "share_keys", "collect_masked_vectors", "unmask"]
    assert list(res.client_seconds) == stages
    assert all(res.client_seconds[s] > 0 and res.server_seconds[s] >= 0 for s in stages)
    assert all(res.bytes_down[s] > 0 and res.bytes_up[s] > 0 for s in stages)
    # Flower uploads the masked vector as int64: 64 bits a parameter whatever the range,
    # plus a fixed ~1.2 kB (npy headers, the emptied fit reply)
    assert 64 <= res.upload_bits_per_parameter < 64 + 8 * 2048 / D


def test_too_many_drops_halt() -> None:
    with pytest.raises(FlowerSecAggHaltedError):
        run_flower_secaggplus(vectors=_vectors(), drop_after_shares=(0, 1, 2), **PARAMS)
