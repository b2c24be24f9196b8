"""The privacy, codec, network and attack groups: each option is a `_target_` plus its settings.

No `mode:`/`profile:` switch picks the class; `none` is `_target_: null`.
"""

import pytest
import yaml

from fl_ext.attacks import ALIE, LineSearch
from simulations.attack_build import build_attack
from simulations.build import build
from simulations.compression_build import build_compression
from simulations.config import CONF_DIR, ConfigError, compose_experiment
from simulations.group_build import group_factory
from simulations.network_build import build_network
from strategies.byzantine import ByzantineSimulation
from strategies.compression import AdaptiveCompression, Compression
from strategies.stragglers import MeasuredStragglers, StragglerPolicy

GROUPS = ("privacy", "codec", "network", "attack")
OPTIONS = sorted(p for g in GROUPS for p in CONF_DIR.glob(f"{g}/*.yaml"))


@pytest.mark.parametrize("path", OPTIONS, ids=lambda p: f"{p.parent.name}={p.stem}")
def test_every_option_names_its_factory_and_gives_every_setting_it_needs(path):
    spec = yaml.safe_load(path.read_text())
    assert "_target_" in spec and "mode" not in spec
    assert path.parent.name != "network" or spec.get("profile") not in ("none", "measured")
    if path.stem == "none":
        assert spec == {"_target_": None}
    factory = group_factory(path.parent.name, spec)  # raises for an unknown or missing key
    assert (factory is None) == (path.stem == "none")


@pytest.mark.parametrize("codec", sorted(p.stem for p in CONF_DIR.glob("codec/*.yaml")))
def test_every_codec_option_builds(codec):
    built = build_compression(compose_experiment([f"codec={codec}", "tracking=none"]).resolved())
    if codec == "none":
        assert built is None
    else:
        assert isinstance(built, AdaptiveCompression if codec == "adaptive" else Compression)


def test_settings_are_checked_against_the_target():
    spec = {"_target_": "simulations.compression_build.compression", "downlink": "none"}
    with pytest.raises(ValueError, match=r"codec\.uplink is missing: .*compression needs it"):
        group_factory("codec", {**spec, "error_feedback": False})
    with pytest.raises(ValueError, match=r"codec\.bits is not a setting of .*: downlink, "):
        group_factory("codec", {**spec, "error_feedback": False, "uplink": {}, "bits": 8})
    with pytest.raises(ValueError, match=r"codec is off .* sets codec\.downlink"):
        group_factory("codec", {"_target_": None, "downlink": "float16"})


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["privacy.mode=dp_sgd"], "'dp_sgd' is an option of the group 'privacy': .*privacy=dp_sgd"),
        (["privacy=none", "privacy.target_epsilon=3"], "exists only with privacy=client_level"),
        (["privacy=client_level", "+privacy.foo=1"], "client_level takes no parameter 'foo'"),
        (["privacy=client_level", "~privacy.clip"], r"privacy\.clip is missing"),
        (["codec=int8", "codec.uplink=null"], r"codec\.uplink must be a codec spec"),
        (["codec=int8", "codec.uplink._target_=os.getcwd"], "must name a class under 'fl_ext.'"),
        (["codec=adaptive", "codec.adaptive.tiers=[{max_mbps:null,uplnk:{}}]"], "uplnk"),
        (["privacy._target_=5"], r"privacy\._target_=5 is invalid"),
        (
            ["network=mixed", "network.profile=satellite"],
            r"network\.profile 'satellite' is not one",
        ),
        (["network=mixed", "network.over_selection=0.5"], r"network\.over_selection must be >= 1"),
        (["network=mobile", "network.deadline_s=fast"], r"network\.deadline_s must be a number"),
        (["network=ideal", "network.period_rounds=0"], r"network\.period_rounds must be an int"),
        (["network=measured", "network.profile=mixed"], "exists only with network=ideal"),
        (["network=none", "network.deadline_s=5"], "exists only with network=ideal"),
        (["network=measured", "+network.diurnal=true"], "measured takes no parameter 'diurnal'"),
        (["network=mixed", "~network.partial_fraction"], r"network\.partial_fraction is missing"),
        (["network._target_=5"], r"network\._target_=5 is invalid"),
        (["attack=none", "attack.num_byzantine=3"], "exists only with attack=alie"),
        (["attack=alie", "attack.num_byzantine=-1"], r"attack\.num_byzantine must be an integer"),
        (["attack=alie", "attack.omniscient=5"], r"attack\.omniscient must be an attack spec"),
        (["attack=alie", "attack.omniscient._target_=os.getcwd"], "a class under 'fl_ext.'"),
        (["attack=malformed", "attack.client_role=evil"], r"attack\.client_role 'evil' unknown"),
        (["attack=alie", "attack.client_role=label_flip"], "omniscient .* or a client_role"),
        (["attack=label_flip", "+attack.z=1"], "byzantine takes no parameter 'z'"),
    ],
)
def test_bad_group_settings_are_refused_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build(compose_experiment(["dataset=digits", "model=mlp", "tracking=none", *overrides]))


@pytest.mark.parametrize("network", sorted(p.stem for p in CONF_DIR.glob("network/*.yaml")))
def test_every_network_option_builds(network):
    built = build_network(compose_experiment([f"network={network}", "tracking=none"]).resolved())
    if network == "none":
        assert built is None
    elif network == "measured":
        assert isinstance(built, MeasuredStragglers) and not built.simulated
    else:
        assert isinstance(built, StragglerPolicy) and built.network.profile == network


def test_network_settings_reach_the_policy_and_the_seed_the_devices():
    conf = compose_experiment(
        ["network=mobile", "network.deadline_s=5", "network.diurnal=true", "seed=7"]
    ).resolved()
    built = build_network(conf)
    assert isinstance(built, StragglerPolicy)
    assert built.deadline_s == 5 and built.network.diurnal and built.network.seed == 7
    assert built.network.profile == "mobile"


@pytest.mark.parametrize("attack", sorted(p.stem for p in CONF_DIR.glob("attack/*.yaml")))
def test_every_attack_option_builds(attack):
    built = build_attack(compose_experiment([f"attack={attack}", "tracking=none"]).resolved())
    if attack == "none":
        assert built is None
        return
    assert isinstance(built, ByzantineSimulation) and built.num_byzantine == 3
    client_side = attack in ("label_flip", "malformed")
    assert (built.omniscient is None) == client_side
    assert (built.client_role is not None) == client_side


def test_attack_settings_reach_the_simulation():
    conf = compose_experiment(["attack=alie", "attack.num_byzantine=2", "seed=5"]).resolved()
    built = build_attack(conf)
    assert isinstance(built, ByzantineSimulation) and isinstance(built.omniscient, ALIE)
    assert built.num_byzantine == 2 and built.seed == 5
    nested = build_attack(compose_experiment(["attack=alie_opt"]).resolved())
    assert nested is not None and isinstance(nested.omniscient, LineSearch)
    flip = build_attack(compose_experiment(["attack=label_flip"]).resolved())
    assert flip is not None and flip.client_role == "label_flip" and flip.needs_fl_ext_client


def test_no_byzantine_node_is_nothing_to_simulate():
    conf = compose_experiment(["attack=sign_flip", "attack.num_byzantine=0"]).resolved()
    assert build_attack(conf) is None


def test_network_and_attack_keys_are_checked_against_the_target():
    measured = {
        "_target_": "simulations.network_build.measured",
        "over_selection": 1.3,
        "deadline_s": None,
        "deadline_percentile": 90,
        "partial_fraction": 0.8,
        "fallback_fraction": 0.5,
    }
    assert group_factory("network", measured) is not None
    with pytest.raises(ValueError, match=r"network\.profile is not a setting of .*measured"):
        group_factory("network", {**measured, "profile": "mixed"})
    with pytest.raises(ValueError, match=r"network\.over_selection is missing"):
        group_factory("network", {k: v for k, v in measured.items() if k != "over_selection"})
    with pytest.raises(ValueError, match=r"network is off .* sets network\.profile"):
        group_factory("network", {"_target_": None, "profile": "mixed"})
    assert group_factory("network", {"_target_": None}) is None
    attack = {"_target_": "simulations.attack_build.byzantine", "num_byzantine": 3}
    with pytest.raises(ValueError, match=r"attack\.omniscient is missing"):
        group_factory("attack", {**attack, "client_role": None})
    with pytest.raises(ValueError, match=r"attack\.num_byzantin is not a setting of .*byzantine"):
        group_factory("attack", {**attack, "num_byzantin": 3})
    with pytest.raises(ValueError, match=r"attack is off .* sets attack\.num_byzantine"):
        group_factory("attack", {"_target_": None, "num_byzantine": 3})
    assert group_factory("attack", {"_target_": None}) is None
