"""Build the strategy's privacy side from the ``privacy`` config group (checks at start).

The group's ``_target_`` names the factory: :func:`client_level` (``privacy=client_level``),
:func:`dp_sgd` (``privacy=dp_sgd``), or null (``privacy=none``: no plan). The group's other keys
are the factory's keyword arguments; the experiment it belongs to comes as a
:class:`PrivacyContext`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import nn

from fl_ext.data.datasets import TrainTestSplit
from fl_ext.data.federated import client_data
from fl_ext.privacy import (
    AdaptiveClipping,
    GaussianSteps,
    PrivacyLedger,
    UnreachableBudget,
    calibrate_noise_multiplier,
    noise_to_signal,
)
from fl_ext.specs import spec_to_json
from fl_ext.tracking.paths import fl_ext_home
from simulations.group_build import build_group
from strategies.privacy import ClientLevelDP, PrivacyPlan, SampleLevelDP

log = logging.getLogger("fl_ext")  # shown by the ServerApp console (console.py)
# Client-level DP warns when the noise std per coordinate of the averaged update exceeds this
# many times a clipped update's per-coordinate scale C/sqrt(d) (measured on MNIST-5k + CNN:
# 14.7x learns, best 0.68 in 30 rounds; 107x stays at chance; see the README).
NOISE_TO_SIGNAL_WARNING = 30.0


@dataclass(frozen=True)
class PrivacyContext:
    """What a privacy factory needs besides the ``privacy`` group's own keys."""

    conf: dict[str, Any]  # the resolved experiment config (num_rounds, seed, tracking, ...)
    split: TrainTestSplit
    model: nn.Module  # a ClassifierNet, or one with adapters


def build_privacy(
    conf: dict[str, Any], split: TrainTestSplit, model: nn.Module
) -> PrivacyPlan | None:
    """The plan ``privacy._target_`` builds, or None (``privacy=none``); ValueError if bad."""
    context = PrivacyContext(conf=conf, split=split, model=model)
    plan = build_group("privacy", conf, (ClientLevelDP, SampleLevelDP), context)
    return cast("PrivacyPlan | None", plan)  # one of the two kinds checked


def _positive(key: str, value: Any, *, allow_none: bool = True) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"privacy.{key} must be > 0, got {value!r}")
    return float(value)


def _ledger_file(ledger_path: str | None, conf: dict[str, Any]) -> Path:
    """``privacy.ledger_path`` or ``$FL_EXT_HOME/privacy/<experiment>/ledger.json``."""
    if ledger_path:
        return Path(str(ledger_path)).expanduser()
    experiment = str((conf.get("tracking") or {}).get("experiment") or "default")
    return fl_ext_home() / "privacy" / experiment / "ledger.json"


def _budget(
    context: PrivacyContext, delta: Any, target_epsilon: Any, noise_multiplier: Any
) -> tuple[float, float | None, float | None]:
    """(delta, target epsilon, sigma) checked: what both mechanisms take."""
    if isinstance(delta, bool) or not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta!r}")
    n = len(context.split.train)
    if delta >= 1 / n:
        log.warning(
            "privacy.delta=%g is >= 1/%d (1/training-set size): a mechanism that leaks one "
            "record in full meets such a delta; use delta << 1/n",
            delta,
            n,
        )
    target = _positive("target_epsilon", target_epsilon)
    sigma = noise_multiplier
    if sigma is not None and (
        isinstance(sigma, bool) or not (isinstance(sigma, (int, float)) and sigma >= 0)
    ):
        raise ValueError(f"privacy.noise_multiplier (sigma) must be >= 0, got {sigma!r}")
    if sigma is None and target is None:
        raise ValueError("give privacy.noise_multiplier or privacy.target_epsilon")
    return float(delta), target, None if sigma is None else float(sigma)


def dp_sgd(
    context: PrivacyContext,
    /,
    *,
    accountant: str,
    delta: float,
    target_epsilon: float | None,
    noise_multiplier: float | None,
    max_grad_norm: float,
    grad_sample_mode: str,
    ledger_path: str | None,
) -> SampleLevelDP:
    """Sample-level DP-SGD in every client (``privacy=dp_sgd``); the server keeps the ledger."""
    conf = context.conf
    delta, target, sigma = _budget(context, delta, target_epsilon, noise_multiplier)
    num_rounds = int(conf["num_rounds"])
    if float((conf.get("strategy") or {}).get("proximal_mu") or 0.0) > 0:
        raise ValueError("privacy=dp_sgd does not train with FedProx's proximal term: use fedavg")
    from fl_ext.privacy.dp_sgd import GRAD_SAMPLE_MODES, check_model  # Opacus: only for DP-SGD

    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"privacy.grad_sample_mode {grad_sample_mode!r} is not one of "
            f"{', '.join(GRAD_SAMPLE_MODES)}"
        )
    check_model(context.model, grad_sample_mode)
    clip = _positive("max_grad_norm", max_grad_norm, allow_none=False)
    assert clip is not None
    path = _ledger_file(ledger_path, conf)
    ledger = PrivacyLedger.open(
        path, accountant=str(accountant), delta=delta, client_target_epsilon=target
    )
    log.info("Privacy: DP-SGD in clients, ledger %s", path)
    if ledger.sample_level:
        known = sorted(ledger.sample_level)
        left = sample_level_rounds_left(
            ledger,
            noise_multiplier=sigma,
            target_epsilon=target,
            num_rounds=num_rounds,
            plans=_plans_from_ledger(ledger, conf),
        )
        log.warning(
            "Privacy ledger carried over: %s; rounds that still fit per client: min %d, max %d "
            "of the %d planned (%d of %d clients have none left; clients not in the ledger "
            "have their whole budget)",
            _earlier_sample_level(ledger),
            min(left.values()),
            max(left.values()),
            num_rounds,
            sum(v == 0 for v in left.values()),
            len(known),
        )
    return SampleLevelDP(
        ledger=ledger,
        max_grad_norm=clip,
        planned_rounds=num_rounds,
        noise_multiplier=sigma,
        target_epsilon=target,
        grad_sample_mode=grad_sample_mode,
    )


def client_level(
    context: PrivacyContext,
    /,
    *,
    accountant: str,
    delta: float,
    target_epsilon: float | None,
    noise_multiplier: float | None,
    sample_rate: float | None,
    clip: float,
    adaptive_clip: bool,
    target_quantile: float,
    clip_learning_rate: float,
    count_noise_multiplier: float,
    noise_seed: int | None,
    ledger_path: str | None,
) -> ClientLevelDP:
    """Client-level DP at the server, DP-FedAvg (``privacy=client_level``)."""
    conf = context.conf
    delta, target, sigma = _budget(context, delta, target_epsilon, noise_multiplier)
    num_rounds = int(conf["num_rounds"])
    path = _ledger_file(ledger_path, conf)
    q = float(conf["fraction_train"] if sample_rate is None else sample_rate)
    if not 0 < q <= 1:
        raise ValueError(f"privacy.sample_rate (q) must be in (0, 1], got {q}")
    c = _positive("clip", clip, allow_none=False)
    assert c is not None
    ledger = PrivacyLedger.open(
        path, accountant=str(accountant), delta=delta, target_epsilon=target
    )
    earlier = _earlier_client_level(ledger)
    if sigma is None:
        assert target is not None
        try:
            sigma = calibrate_noise_multiplier(
                target_epsilon=target,
                delta=delta,
                sample_rate=q,
                steps=num_rounds,
                accountant=ledger.accountant,
                spent=tuple(ledger.client_level),
            )
        except UnreachableBudget as err:
            if not ledger.client_level:
                raise
            raise ValueError(
                f"privacy budget spent: {earlier}; not one round of the {num_rounds} planned "
                f"fits even with the largest noise ({err}). {_fresh_ledger_hint(path)}"
            ) from err
    entry = GaussianSteps(float(sigma), q, 1)
    fits = ledger.rounds_that_fit(entry, num_rounds)
    if fits == 0:
        raise ValueError(
            f"privacy budget spent: {earlier}; not one more round of sigma={sigma:.4g} "
            f"q={q:g} fits (it would take epsilon to "
            f"{ledger.client_level_epsilon(entry):.4g}). {_fresh_ledger_hint(path)}"
        )
    planned = ledger.client_level_epsilon(GaussianSteps(float(sigma), q, fits))
    log.info(
        "Privacy: client-level DP, sigma=%.4g q=%.4g C=%g: %d of %d rounds fit, epsilon %.4g "
        "(delta %g, %s; already spent %.4g), ledger %s",
        sigma,
        q,
        c,
        fits,
        num_rounds,
        planned,
        delta,
        ledger.accountant,
        ledger.client_level_epsilon(),
        path,
    )
    if ledger.client_level:
        calibrated = ""
        if noise_multiplier is None:
            assert target is not None
            fresh = calibrate_noise_multiplier(
                target_epsilon=target,
                delta=delta,
                sample_rate=q,
                steps=num_rounds,
                accountant=ledger.accountant,
            )
            calibrated = (
                f" with sigma={sigma:.4g} calibrated for the budget left (a fresh ledger "
                f"would give sigma={fresh:.4g})"
            )
        log.warning(
            "Privacy ledger carried over: %s; %d of the %d planned rounds still fit%s",
            earlier,
            fits,
            num_rounds,
            calibrated,
        )
    elif fits < num_rounds:
        log.warning("Privacy budget allows %d of the %d planned rounds", fits, num_rounds)
    adaptive = (
        AdaptiveClipping(
            target_quantile=float(target_quantile),
            learning_rate=float(clip_learning_rate),
            count_noise_multiplier=float(count_noise_multiplier),
        )
        if adaptive_clip
        else None
    )
    return ClientLevelDP(
        ledger=ledger,
        noise_multiplier=float(sigma),
        sample_rate=q,
        clip=c,
        adaptive=adaptive,
        selection_seed=int(conf["seed"]),
        noise_seed=noise_seed,
    )


def _fresh_ledger_hint(path: Path) -> str:
    return (
        f"The ledger {path} keeps every round ever released on this data, so this run "
        "would train nothing. Start a fresh ledger with privacy.ledger_path=<new file> or a "
        "new tracking.experiment=<name> (the default ledger is "
        "$FL_EXT_HOME/privacy/<tracking.experiment>/ledger.json), or raise "
        "privacy.target_epsilon"
    )


def _earlier_client_level(ledger: PrivacyLedger) -> str:
    return (
        f"ledger {ledger.path} holds {len(ledger.client_level)} client-level rounds of earlier "
        f"runs, epsilon {ledger.client_level_epsilon():.4g} spent of target_epsilon "
        f"{ledger.target_epsilon} (delta {ledger.delta:g}, {ledger.accountant})"
    )


def _earlier_sample_level(ledger: PrivacyLedger) -> str:
    return (
        f"ledger {ledger.path} holds DP-SGD spends of {len(ledger.sample_level)} clients from "
        f"{len(ledger.rounds)} earlier rounds, sample-level epsilon up to "
        f"{ledger.max_sample_level_epsilon():.4g} of the per-client target_epsilon "
        f"{ledger.client_target_epsilon} (delta {ledger.delta:g}, {ledger.accountant})"
    )


def sample_level_rounds_left(
    ledger: PrivacyLedger,
    *,
    noise_multiplier: float | None,
    target_epsilon: float | None,
    num_rounds: int,
    plans: dict[str, tuple[float, int]],
) -> dict[str, int]:
    """Rounds of this run each DP-SGD client can still train within its budget.

    ``plans`` gives each client's (q, steps) of one round (:func:`round_plan` of its
    partition). Sigma is ``noise_multiplier``, or (None) the one a client calibrates for
    ``num_rounds`` and ``target_epsilon`` (:func:`fl_ext.privacy.dp_sgd.noise_for`): a client
    not in the ledger then fits every planned round by construction.
    """
    fixed = noise_multiplier
    sigmas: dict[tuple[float, int], float] = {}
    done: dict[tuple[Any, ...], int] = {}
    left: dict[str, int] = {}
    for client, (q, steps) in plans.items():
        history = ledger.sample_level.get(client, [])
        if fixed is None and not history:
            left[client] = num_rounds
            continue
        if (q, steps) not in sigmas and fixed is not None:
            sigmas[q, steps] = float(fixed)
        elif (q, steps) not in sigmas:
            if target_epsilon is None:
                raise ValueError("give privacy.noise_multiplier or privacy.target_epsilon")
            sigmas[q, steps] = calibrate_noise_multiplier(
                target_epsilon=target_epsilon,
                delta=ledger.delta,
                sample_rate=q,
                steps=steps * num_rounds,
                accountant=ledger.accountant,
            )
        key = (tuple(tuple(e.as_list()) for e in history), q, steps)
        if key not in done:
            entry = GaussianSteps(sigmas[q, steps], q, steps)
            done[key] = ledger.sample_level_rounds_that_fit(client, entry, num_rounds)
        left[client] = done[key]
    return left


def _plans_from_ledger(ledger: PrivacyLedger, conf: dict[str, Any]) -> dict[str, tuple[float, int]]:
    """(q, steps) of each client in the ledger, at the sampling rate of its last round."""
    epochs = int(conf["local_epochs"])
    plans = {}
    for client, history in ledger.sample_level.items():
        steps_per_epoch = max(1, round(1 / history[-1].sample_rate))
        plans[client] = (1 / steps_per_epoch, epochs * steps_per_epoch)
    return plans


def _plans_from_partitions(conf: dict[str, Any], num_nodes: int) -> dict[str, tuple[float, int]]:
    """(q, steps) of partitions ``0..num_nodes-1``, from the data each client will train on."""
    from fl_ext.privacy.dp_sgd import round_plan  # Opacus: only for DP-SGD

    plans = {}
    for pid in range(num_nodes):
        data = client_data(
            dataset_spec_json=spec_to_json(conf["dataset"]),
            partition_spec_json=spec_to_json(conf["partition"]),
            partition_id=pid,
            num_partitions=num_nodes,
            local_test_fraction=float(conf["local_test_fraction"]),
        )
        plans[str(pid)] = round_plan(
            len(data.train), int(conf["batch_size"]), int(conf["local_epochs"])
        )
    return plans


def check_privacy_federation(
    plan: PrivacyPlan | None, conf: dict[str, Any], *, num_nodes: int, dim: int
) -> None:
    """Checks that need the federation's size (at the start of a run, before round 1).

    DP-SGD: refuse (ValueError) when no client of this federation (partition ids
    ``0..num_nodes-1``) has budget left for one round. Client-level DP: say how the noise on
    the averaged update compares with the update itself, and warn when it swamps it.
    """
    if isinstance(plan, SampleLevelDP):
        ledger = plan.ledger
        if ledger.client_target_epsilon is None:
            return
        sigma = conf["privacy"].get("noise_multiplier")
        left = sample_level_rounds_left(
            ledger,
            noise_multiplier=sigma,
            target_epsilon=plan.target_epsilon,
            num_rounds=int(conf["num_rounds"]),
            plans=_plans_from_partitions(conf, num_nodes),
        )
        spent = [c for c, n in left.items() if n == 0]
        if len(spent) == num_nodes and not ledger.sample_level:
            raise ValueError(
                f"privacy.noise_multiplier={sigma} is too small for privacy.target_epsilon="
                f"{ledger.client_target_epsilon}: one round of DP-SGD on any of the "
                f"{num_nodes} partitions already exceeds it, so every client would decline; "
                "raise the noise multiplier, or leave it null to calibrate it"
            )
        if len(spent) == num_nodes:
            raise ValueError(
                f"privacy budget spent: {_earlier_sample_level(ledger)}; none of the "
                f"{num_nodes} clients has budget for one more round (each would decline). "
                f"{_fresh_ledger_hint(Path(str(ledger.path)))}"
            )
        log.info(
            "Privacy: %d of %d clients can train this run (rounds that fit: min %d, max %d of %d)",
            num_nodes - len(spent),
            num_nodes,
            min(left.values()),
            max(left.values()),
            int(conf["num_rounds"]),
        )
        if spent:
            log.warning(
                "Privacy: %d of %d clients have no budget left in %s and will decline: %s",
                len(spent),
                num_nodes,
                ledger.path,
                ", ".join(spent[:20]) + (" ..." if len(spent) > 20 else ""),
            )
    elif isinstance(plan, ClientLevelDP):
        expected = plan.sample_rate * num_nodes
        noise, scale = noise_to_signal(
            noise_multiplier=plan.noise_multiplier,
            clip=plan.clip,
            expected_clients=expected,
            dim=dim,
            adaptive=plan.adaptive,
        )
        ratio = noise / scale
        message = (
            "client-level DP noise std per coordinate of the averaged update: sigma*C/(q*N) = "
            "%.4g*%g/(%g*%d) = %.3g, vs a clipped update's per-coordinate scale C/sqrt(d) = "
            "%g/sqrt(%d) = %.3g: %.1fx"
        )
        args: tuple[float, ...] = (
            plan.noise_multiplier,
            plan.clip,
            plan.sample_rate,
            num_nodes,
            noise,
        )
        args += (plan.clip, dim, scale, ratio)
        if ratio <= NOISE_TO_SIGNAL_WARNING:
            log.info(message, *args)
            return
        nodes_needed = math.ceil(num_nodes * ratio / NOISE_TO_SIGNAL_WARNING)
        log.warning(
            message + ". The noise swamps the update (over %gx): the model is unlikely to "
            "learn. Use more clients per round (about %d nodes at this q), a larger "
            "privacy.target_epsilon, fewer num_rounds or a smaller model",
            *args,
            NOISE_TO_SIGNAL_WARNING,
            nodes_needed,
        )
