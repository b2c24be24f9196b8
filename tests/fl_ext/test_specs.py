import pytest

from fl_ext.data import DatasetSource, IidPartitioner, Partitioner
from fl_ext.specs import SpecError, build_from_spec, spec_from_json, spec_to_json


def test_builds_allowed_subclass():
    part = build_from_spec({"_target_": "fl_ext.data.IidPartitioner", "seed": 3}, Partitioner)
    assert isinstance(part, IidPartitioner)
    assert part.seed == 3


@pytest.mark.parametrize(
    "target",
    ["os.system", "subprocess.Popen", "fl_ext.data.IidPartitioner", "fl_ext.nope.Thing", 42],
)
def test_refuses_targets_outside_fl_ext_or_wrong_base(target):
    with pytest.raises(SpecError):
        build_from_spec({"_target_": target}, DatasetSource)


def test_bad_kwargs_and_missing_target_are_spec_errors():
    with pytest.raises(SpecError, match="cannot build"):
        build_from_spec({"_target_": "fl_ext.data.IidPartitioner", "alpha": 1}, Partitioner)
    with pytest.raises(SpecError, match="no '_target_'"):
        build_from_spec({"seed": 1}, Partitioner)


def test_json_round_trip_and_rejects_non_objects():
    spec = {"_target_": "fl_ext.data.IidPartitioner", "seed": 1}
    assert spec_from_json(spec_to_json(spec)) == spec
    for bad in ["[1, 2]", "not json", "3"]:
        with pytest.raises(SpecError):
            spec_from_json(bad)
