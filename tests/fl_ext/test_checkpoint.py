import json
from collections import OrderedDict

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fl_ext.checkpoint import CheckpointError, CheckpointStore, schema_hash


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return OrderedDict(
        [
            ("fc1.weight", rng.normal(size=(4, 3)).astype(np.float32)),
            ("fc1.bias", np.zeros(4, np.float32)),
        ]
    )


def _flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


@pytest.fixture
def key():
    return Ed25519PrivateKey.generate()


def test_round_trip_of_model_state_and_tensors(tmp_path, key):
    store = CheckpointStore(tmp_path, signing_key=key)
    state = {"round": 3, "registry": {"17": {"selected": 2}}, "nan": float("nan")}
    saved = store.save(3, _arrays(), state, {"center": np.arange(5.0)})
    loaded = CheckpointStore(tmp_path, verify_key=key.public_key()).load()
    assert loaded.server_round == 3 and list(loaded.arrays) == ["fc1.weight", "fc1.bias"]
    for k, v in _arrays().items():
        np.testing.assert_array_equal(loaded.arrays[k], v)
        assert loaded.arrays[k].dtype == v.dtype
    assert loaded.state["registry"] == state["registry"] and np.isnan(loaded.state["nan"])
    np.testing.assert_array_equal(loaded.tensors["center"], np.arange(5.0))
    assert loaded.signature == saved.signature and len(bytes.fromhex(saved.signature)) == 64
    assert sorted(p.name for p in loaded.path.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "model.npz",
        "state.json",
        "state.npz",
    ]


def test_latest_round_and_leftover_temporary_directories_are_ignored(tmp_path, key):
    store = CheckpointStore(tmp_path, signing_key=key)
    for r in (1, 2, 3):
        store.save(r, _arrays(r), {"round": r})
    (tmp_path / ".round-000004-crashed").mkdir()  # a save interrupted before its rename
    assert store.rounds() == [1, 2, 3] and store.latest() == 3
    assert store.load().server_round == 3
    np.testing.assert_array_equal(store.load(2).arrays["fc1.weight"], _arrays(2)["fc1.weight"])


@pytest.mark.parametrize(
    ("target", "change", "message"),
    [
        ("model.npz", lambda p: p.write_bytes(_flip(p.read_bytes())), "tampered"),
        ("state.json", lambda p: p.write_text(p.read_text().replace("3", "4")), "tampered"),
        ("state.npz", lambda p: p.unlink(), "missing"),
        ("manifest.sig", lambda p: p.unlink(), "unsigned"),
        ("manifest.sig", lambda p: p.write_text("00" * 64), "bad signature"),
        ("manifest.sig", lambda p: p.write_text("zz"), "bad signature"),
        (
            "manifest.json",
            lambda p: p.write_text(p.read_text().replace('"round": 3', '"round": 2')),
            "bad signature",
        ),
    ],
)
def test_tampered_or_unsigned_checkpoints_are_refused(tmp_path, key, target, change, message):
    store = CheckpointStore(tmp_path, signing_key=key)
    saved = store.save(3, _arrays(), {"round": 3}, {"center": np.ones(2)})
    change(saved.path / target)
    with pytest.raises(CheckpointError, match=message):
        store.load(3)


def test_a_checkpoint_signed_by_another_key_is_refused(tmp_path, key):
    CheckpointStore(tmp_path, signing_key=Ed25519PrivateKey.generate()).save(1, _arrays(), {})
    with pytest.raises(CheckpointError, match="bad signature"):
        CheckpointStore(tmp_path, verify_key=key.public_key()).load()


def test_missing_rounds_and_empty_directories_are_named(tmp_path, key):
    store = CheckpointStore(tmp_path / "none", signing_key=key)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        store.load()
    store.save(2, _arrays(), {})
    with pytest.raises(CheckpointError, match=r"round 5 .*rounds present: \[2\]"):
        store.load(5)
    with pytest.raises(CheckpointError, match="cannot save"):
        CheckpointStore(tmp_path, verify_key=key.public_key()).save(3, _arrays(), {})


def test_keep_last_prunes_old_rounds_but_never_a_protected_one(tmp_path, key):
    store = CheckpointStore(tmp_path, signing_key=key, keep_last=2)
    for r in range(1, 6):
        store.save(r, _arrays(r), {}, protect=frozenset({2}))
    assert store.rounds() == [2, 4, 5]
    with pytest.raises(ValueError, match="keep_last"):
        CheckpointStore(tmp_path, signing_key=key, keep_last=0)


def test_saving_a_round_again_replaces_it(tmp_path, key):
    store = CheckpointStore(tmp_path, signing_key=key)
    store.save(1, _arrays(1), {"v": 1})
    store.save(1, _arrays(2), {"v": 2})
    assert store.load(1).state == {"v": 2} and store.rounds() == [1]


def test_schema_hash_depends_on_names_shapes_and_dtypes_not_values():
    a = _arrays(0)
    assert schema_hash(a) == schema_hash(_arrays(1))
    b = OrderedDict(a, **{"fc1.bias": np.zeros(5, np.float32)})
    c = OrderedDict((k, v.astype(np.float64)) for k, v in a.items())
    d = OrderedDict(reversed(list(a.items())))
    assert len({schema_hash(x) for x in (a, b, c, d)}) == 4


def test_manifest_is_readable_json_with_every_file_hash(tmp_path, key):
    saved = CheckpointStore(tmp_path, signing_key=key).save(7, _arrays(), {})
    manifest = json.loads((saved.path / "manifest.json").read_text())
    assert manifest["round"] == 7 and manifest["format"] == "fl-ext-checkpoint/1"
    assert set(manifest["files"]) == {"model.npz", "state.npz", "state.json"}
