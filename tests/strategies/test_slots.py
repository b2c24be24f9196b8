"""The engine's slots and capability stages, each driven by a Round and hand-built replies."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_ext.aggregators import Krum, RobustAggregation, WeightedMean
from fl_ext.attacks import SignFlip
from fl_ext.codecs import BlockQuant
from fl_ext.compat import INCOMPATIBLE
from fl_ext.privacy import PrivacyLedger
from fl_ext.refusals import DECLINED
from fl_ext.selection import UniformSelector
from fl_ext.server_opt import FedAdam
from fl_ext.validation import RejectReason
from flwr_records import named_array_record, payload_record
from strategies import FlExtFedAvg
from strategies.aggregation import RobustStep, ServerReference, ServerStep
from strategies.byzantine import ByzantineSimulation
from strategies.checks import ReplyChecks
from strategies.compression import Compression
from strategies.decoding import Decoder
from strategies.privacy import ClientLevelDP, SampleLevelDP
from strategies.replies import TrainReply
from strategies.round import Round
from strategies.sampling import SelectorSampler
from strategies.stage import Stage, unmet_requirements
from strategies.stages import Compat

from .test_fedavg import GLOBAL

SIZE = sum(v.size for v in GLOBAL.values())


def _round(number=1, selected=(1, 2, 3), max_update_norm=None):
    rnd = Round.start(
        number,
        OrderedDict((k, v.copy()) for k, v in GLOBAL.items()),
        max_update_norm=max_update_norm,
    )
    rnd.log.selected = list(selected)
    return rnd


def _arrays(value):
    return OrderedDict((k, np.full_like(v, value)) for k, v in GLOBAL.items())


def _reply(node, value, examples=10, loss=0.5):
    return TrainReply(node, _arrays(value), examples, {"train_loss": loss})


def _message(node, arrays: ArrayRecord | None = None, metrics=None, error=None):
    """A reply as the grid would deliver it from ``node``."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    content = RecordDict(
        {
            "arrays": arrays if arrays is not None else named_array_record(_arrays(1.0)),
            "metrics": MetricRecord(metrics or {"num-examples": 10, "train_loss": 0.5}),
        }
    )
    request = Message(
        RecordDict({"config": ConfigRecord()}), dst_node_id=node, message_type="train"
    )
    reply = Message(error, reply_to=request) if error else Message(content, reply_to=request)
    return reply


# ------------------------------------------------------------------ sampler
def test_selector_sampler_skips_below_its_minimum_and_over_selects_with_the_clock():
    sampler = SelectorSampler(UniformSelector(fraction=0.5, minimum=2, seed=0), min_nodes=2)
    rnd = _round(selected=())
    assert sampler.sample(rnd, [7], over_select=lambda k, n: k) == []
    assert "min_train_nodes is 2" in rnd.log.skipped
    rnd = _round(selected=())
    chosen = sampler.sample(rnd, list(range(10)), over_select=lambda k, n: min(n, k + 2))
    assert rnd.needed == 5 and len(chosen) == 7 and set(chosen) <= set(range(10))
    assert all(sampler.registry.get(n).selected == 1 for n in chosen)


def test_selector_sampler_history_from_accepted_replies_durations_and_late_ones():
    sampler = SelectorSampler(UniformSelector(fraction=1.0, minimum=1, seed=0), min_nodes=1)
    rnd = _round(selected=(1, 2))
    rnd.durations = {1: 3.0, 2: 9.0}
    sampler.on_accepted(rnd, [_reply(1, 1.0, loss=0.25)])
    one, two = sampler.registry.get(1), sampler.registry.get(2)
    assert one.succeeded == 1 and one.duration_s == 3.0 and one.utility == 10 * 0.25
    assert two.failed == 1 and two.duration_s == 9.0  # selected, no valid update: speed counts
    sampler.on_late(3, 4.0)
    assert sampler.registry.get(3).duration_s == 4.0


def test_poisson_sampler_waits_for_every_sampled_node_and_is_seeded():
    def dp():
        ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
        return ClientLevelDP(
            ledger=ledger, noise_multiplier=1.0, sample_rate=0.3, clip=1.0, selection_seed=4
        )

    a, b = dp(), dp()
    rnd = _round(selected=())
    chosen = a.sample(rnd, list(range(200)), over_select=lambda k, n: n)
    assert rnd.needed == len(chosen) and 30 < len(chosen) < 90
    assert b.sample(_round(selected=()), list(range(200)), over_select=lambda k, n: n) == chosen


# ------------------------------------------------------------------ decoder
def test_dense_decoder_is_reply_minus_global():
    rnd = _round()
    rnd.global_flat.fill_(0.5)
    row = Decoder().to_update(rnd, _reply(1, 2.0), torch.empty(SIZE))
    assert torch.equal(row, torch.full((SIZE,), 1.5))


def test_codec_decoder_checks_and_decodes_the_payload_of_the_nodes_codec():
    codec = BlockQuant(bits=8, block=16)
    comp = Compression(uplink=codec)
    update = np.linspace(-1, 1, SIZE).astype(np.float32)
    payload = payload_record(codec.encode(update, np.random.default_rng(0)))
    checks = ReplyChecks(stages=[comp], decoder=comp, max_examples=None, max_update_norm=None)
    rnd = _round(selected=(1, 2))
    bad = payload_record(codec.encode(update[:5], np.random.default_rng(0)))
    updates, accepted = checks.train(rnd, [_message(1, payload), _message(2, bad)])
    assert [r.node_id for r in accepted] == [1]
    np.testing.assert_allclose(updates[0].numpy(), update, atol=2 / 255)
    assert dict(rnd.log.rejected) == {"malformed": 1}


# -------------------------------------------------------------- aggregation
def test_robust_step_caps_weights_and_skips_below_the_rules_minimum():
    step = RobustStep(RobustAggregation(rule=WeightedMean()), min_replies=2, weight_cap_factor=2.0)
    rnd = _round()
    updates = torch.stack([torch.full((SIZE,), v) for v in (1.0, 2.0, 3.0)])
    liar = [_reply(1, 0, examples=10), _reply(2, 0, examples=10), _reply(3, 0, examples=10**12)]
    delta = step.aggregate(rnd, updates, liar)
    # the liar's weight is capped at 2 x the lower median (10): (10*1 + 10*2 + 20*3) / 40
    assert torch.allclose(delta, torch.full((SIZE,), 90 / 40))
    assert step.aggregate(_round(), updates[:1], liar[:1]) is None
    krum = RobustStep(RobustAggregation(rule=Krum(f=1)), min_replies=2, weight_cap_factor=2.0)
    rnd = _round()
    assert krum.aggregate(rnd, updates, liar) is None and "Krum" in rnd.log.skipped


def test_gaussian_mechanism_releases_every_round_and_records_the_spend():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    dp = ClientLevelDP(ledger=ledger, noise_multiplier=1.0, sample_rate=0.5, clip=1.0, noise_seed=1)
    rnd = _round()
    rnd.available = [1, 2, 3, 4]
    updates = torch.stack([torch.full((SIZE,), 10.0), torch.full((SIZE,), -10.0)])
    delta = dp.aggregate(rnd, updates, [_reply(1, 0), _reply(2, 0)])
    assert delta.shape == (SIZE,) and len(ledger.client_level) == 1
    assert dp.min_inputs() == 0  # released (and accounted) even with no reply
    assert dp.metrics(rnd)["dp_expected_clients"] == 2.0


def test_server_step_is_the_optimizer_on_the_aggregate_and_its_state_round_trips():
    step, direct = ServerStep(FedAdam(eta=0.1)), FedAdam(eta=0.1)
    delta = torch.linspace(-1, 1, SIZE)
    state = direct.init(delta)
    expected, state = direct.update(delta, state)
    assert torch.allclose(step.step(delta), expected)
    restored = ServerStep(FedAdam(eta=0.1))
    restored.load_state_dict(step.state_dict())
    assert torch.allclose(restored.step(delta), direct.update(delta, state)[0])


def test_server_reference_provides_the_update_fltrust_requires():
    from fl_ext.aggregators import FLTrust

    with pytest.raises(ValueError, match=r"needs reference_update.*root set"):
        FlExtFedAvg(aggregation=FLTrust())
    reference = ServerReference(lambda r, arrays: torch.full((SIZE,), float(r)))
    rnd = _round(number=4)
    reference.on_accepted(rnd, [])
    assert torch.equal(rnd.reference, torch.full((SIZE,), 4.0))
    FlExtFedAvg(aggregation=FLTrust(), reference_update=reference.update)


# ------------------------------------------------------------ requirements
class Rounds(Stage):
    """A driver that provides no individual updates (as secure aggregation)."""

    name = "driver"
    label = "the secure-aggregation driver"


def test_one_check_names_every_unmet_requirement():
    byz = ByzantineSimulation(num_byzantine=1, omniscient=SignFlip())
    step = RobustStep(RobustAggregation(rule=Krum(f=1)), min_replies=2, weight_cap_factor=2.0)
    message = unmet_requirements([byz, step], driver="the secure-aggregation driver", provided=())
    assert message.count("needs individual_updates") == 2
    assert "ByzantineSimulation" in message and "Krum" in message
    assert "the secure-aggregation driver" in message
    assert unmet_requirements([byz, step], driver="d", provided={"individual_updates"}) == ""


def test_a_part_that_takes_a_slot_already_configured_is_refused():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5)
    dp = ClientLevelDP(ledger=ledger, noise_multiplier=1.0, sample_rate=0.5, clip=1.0)
    with pytest.raises(
        ValueError, match=r"takes the aggregation slot.*cannot be combined with Krum"
    ):
        FlExtFedAvg(privacy=dp, aggregation=Krum(f=1))
    assert FlExtFedAvg(privacy=dp).aggregation is dp and FlExtFedAvg(privacy=dp).sampler is dp


# ------------------------------------------------------------------ stages
def test_omniscient_attack_replaces_byzantine_rows_and_checks_their_norm():
    byz = ByzantineSimulation(num_byzantine=1, omniscient=SignFlip(), seed=0)
    rnd = _round(selected=(1, 2, 3), max_update_norm=100.0)
    byz.eligible(rnd, [1, 2, 3])
    (bad,) = byz.byzantine
    replies = [_reply(n, 0) for n in (1, 2, 3)]
    updates = torch.stack([torch.full((SIZE,), 1.0) for _ in replies])
    out, kept = byz.transform(rnd, updates.clone(), replies)
    assert rnd.log.byzantine == 1 and len(kept) == 3
    row = [r.node_id for r in kept].index(bad)
    assert torch.all(out[row] < 0)  # the crafted row points against the honest mean
    assert byz.node_entries(rnd, bad) == {}  # an omniscient attack tells the client nothing


def test_sample_level_dp_declined_and_exhausted_nodes_are_left_out():
    ledger = PrivacyLedger(accountant="rdp", delta=1e-5, client_target_epsilon=3.0)
    dp = SampleLevelDP(ledger=ledger, max_grad_norm=1.0, planned_rounds=5, target_epsilon=3.0)
    rnd = _round()
    assert dp.on_error(rnd, 2, DECLINED, "budget spent") is True
    assert dp.on_error(rnd, 3, 0, "crash") is False
    assert dp.eligible(rnd, [1, 2, 3]) == [1, 3]
    assert dp.entries(rnd)["dp-mode"] == "dp_sgd"


def test_checks_route_errors_refuse_strangers_and_duplicates_and_bound_norms():
    compat = Compat()
    checks = ReplyChecks(stages=[compat], decoder=Decoder(), max_examples=None, max_update_norm=5.0)
    rnd = _round(selected=(1, 2, 3, 4))
    replies = [
        _message(1),
        _message(1),  # a duplicate
        _message(9),  # not selected
        _message(2, error=Error(code=INCOMPATIBLE, reason="schema")),
        _message(3, named_array_record(_arrays(1e30))),  # norm far above the bound
        _message(4, named_array_record(_arrays(0.5))),
    ]
    updates, accepted = checks.train(rnd, replies)
    assert [r.node_id for r in accepted] == [1, 4] and updates.shape == (2, SIZE)
    assert compat.incompatible == {2: "schema"} and rnd.log.failed == 1
    assert dict(rnd.log.rejected) == {
        RejectReason.MALFORMED.value: 2,
        RejectReason.NORM_TOO_LARGE.value: 1,
    }
