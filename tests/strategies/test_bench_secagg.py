"""Smoke test of ``python -m bench.secagg`` at its smallest setting (n=4, d=1000)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench import secagg
from bench.secagg import dropped_indices, make_inputs, run_ours

FIELDS = {
    "impl", "n", "d", "drop", "dropped", "bits", "upload_bits_per_param",
    "client_s", "client_s_per_client", "client_mask_s_per_client", "client_total_s_per_client",
    "server_s", "server_unmask_s", "server_total_s", "bytes_down", "bytes_up",
    "max_error", "exact", "plain_sum_s",
}  # fmt: skip
OURS = {
    "prg_bytes_per_second", "prg_limit_client_s", "prg_limit_server_s", "x_limit_client",
    "x_limit_server", "vs_flower_client", "vs_flower_server", "degree", "threshold",
}  # fmt: skip
PHASES = ["keys", "shares", "masked", "unmask"]


def test_main_rows_and_goals(tmp_path: Path) -> None:
    out = tmp_path / "secagg.json"
    report = secagg.main(["--n", "4", "--d", "1000", "--drop", "0", "0.25", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    rows = report["rows"]
    # per drop fraction: fl-ext plus, fl-ext full, flower secagg+
    assert [r["impl"] for r in rows] == ["fl-ext plus", "fl-ext full", "flower secagg+"] * 2
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert (row["n"], row["d"]) == (4, 1000)
        assert row["dropped"] == round(row["drop"] * 4)
        assert list(row["client_s"]) == PHASES and list(row["bytes_up"]) == PHASES
        assert all(row["bytes_down"][p] > 0 and row["bytes_up"][p] > 0 for p in PHASES)
        assert row["skipped"] is None if row["impl"].startswith("flower") else True
    for row in (r for r in rows if r["impl"].startswith("fl-ext")):
        assert OURS <= set(row), OURS - set(row)
        assert row["exact"] == "exact"
        assert row["max_error"] <= 0.1 / 127
        assert row["survivors"] == 4 - row["dropped"] and row["total_weight"] == row["survivors"]
        # 10-bit words, packed: 10 bits a parameter plus the framing of a 1000-value vector
        assert row["bits"] == 10 and 10 <= row["upload_bits_per_param"] < 20
        assert row["vs_flower_client"] > 0 and row["vs_flower_server"] > 0
    for row in (r for r in rows if r["impl"].startswith("flower")):
        assert row["bits"] == 64 and row["upload_bits_per_param"] >= 64
        assert row["max_error"] <= 2 * 0.1 / 255 + 1e-9
    assert report["goals"][0]["status"] == "NOT RUN"  # no n=100 row
    assert all(g["status"] in {"PASS", "FAIL", "NOT RUN"} for g in report["goals"])


def test_unmasked_sum_is_the_plain_sum_of_the_encoded_words() -> None:
    vectors = make_inputs(4, 1000, seed=3)
    res = run_ours(vectors, dropped_indices(4, 0.25), graph="plus", seed=3)
    assert res["survivors"] == [1, 2, 3]
    assert res["sum"].dtype == np.uint16 and res["sum"].shape == (1001,)
    assert np.array_equal(res["sum"].astype(np.int64), res["plain_sum"]) and res["exact"]
    assert res["weight"] == 3 and int(res["plain_sum"][-1]) == 3  # weight 1 each, summed
    plain = np.mean(np.stack(vectors[1:]).astype(np.float64), axis=0)
    assert np.abs(res["mean"] - plain).max() <= 0.1 / 127
