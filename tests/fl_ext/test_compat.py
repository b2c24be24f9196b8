import pytest

from fl_ext.compat import incompatibility, parse_version, schema_mismatch


@pytest.mark.parametrize(
    ("local", "remote", "ok"),
    [
        ("0.1.0", "0.1.7", True),
        ("0.1.0", "0.1.0+local", True),
        ("0.1.0", "0.2.0", False),  # before 1.0 a minor release may change the wire format
        ("1.2.0", "1.9.3", True),
        ("1.2.0", "2.0.0", False),
        ("1.2.0", "1.2", True),
    ],
)
def test_semantic_version_compatibility(local, remote, ok):
    assert (incompatibility(local, remote) is None) == ok


def test_unreadable_versions_and_schemas_are_named():
    with pytest.raises(ValueError, match="not a version"):
        parse_version("v1")
    assert "client version unreadable" in incompatibility("0.1.0", "banana")
    assert schema_mismatch("a" * 64, "a" * 64) is None
    assert "model schema differs (client none" in schema_mismatch("a" * 64, "")
