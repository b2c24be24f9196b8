"""Build the strategy's privacy side from the ``privacy`` config group (checks at start)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fl_ext.data.datasets import TrainTestSplit
from fl_ext.models import ClassifierNet
from fl_ext.privacy import (
    AdaptiveClipping,
    GaussianSteps,
    PrivacyLedger,
    calibrate_noise_multiplier,
)
from fl_ext.privacy.dp_sgd import GRAD_SAMPLE_MODES, check_model
from fl_ext.tracking.paths import fl_ext_home
from strategies.privacy import ClientLevelDP, PrivacyPlan, SampleLevelDP

log = logging.getLogger(__name__)
MODES = ("none", "client_level", "dp_sgd")


def _positive(p: dict[str, Any], key: str, *, allow_none: bool = True) -> float | None:
    value = p.get(key)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"privacy.{key} must be > 0, got {value!r}")
    return float(value)


def ledger_path(p: dict[str, Any], conf: dict[str, Any]) -> Path:
    """``privacy.ledger_path`` or ``$FL_EXT_HOME/privacy/<experiment>/ledger.json``."""
    if p.get("ledger_path"):
        return Path(str(p["ledger_path"])).expanduser()
    experiment = str((conf.get("tracking") or {}).get("experiment") or "default")
    return fl_ext_home() / "privacy" / experiment / "ledger.json"


def build_privacy(
    conf: dict[str, Any], split: TrainTestSplit, model: ClassifierNet
) -> PrivacyPlan | None:
    """The privacy plan of ``conf["privacy"]``, or None; ValueError for a bad setting."""
    p = dict(conf.get("privacy") or {"mode": "none"})
    mode = p.get("mode", "none")
    if mode not in MODES:
        raise ValueError(f"privacy.mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "none":
        return None
    delta = p.get("delta")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"privacy.delta must be in (0, 1), got {delta!r}")
    if delta >= 1 / len(split.train):
        log.warning(
            "privacy.delta=%g is >= 1/%d (1/training-set size): a mechanism that leaks one "
            "record in full meets such a delta; use delta << 1/n",
            delta,
            len(split.train),
        )
    target = _positive(p, "target_epsilon")
    sigma = p.get("noise_multiplier")
    if sigma is not None and not (isinstance(sigma, (int, float)) and sigma >= 0):
        raise ValueError(f"privacy.noise_multiplier (sigma) must be >= 0, got {sigma!r}")
    if sigma is None and target is None:
        raise ValueError("give privacy.noise_multiplier or privacy.target_epsilon")
    path = ledger_path(p, conf)
    num_rounds = int(conf["num_rounds"])
    if mode == "client_level":
        return _client_level(p, conf, path, float(delta), target, sigma, num_rounds)
    if float((conf.get("strategy") or {}).get("proximal_mu") or 0.0) > 0:
        raise ValueError("privacy=dp_sgd does not train with FedProx's proximal term: use fedavg")
    grad_mode = p.get("grad_sample_mode", "fused")
    if grad_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"privacy.grad_sample_mode {grad_mode!r} is not one of {', '.join(GRAD_SAMPLE_MODES)}"
        )
    check_model(model, grad_mode)
    ledger = PrivacyLedger.open(
        path, accountant=str(p["accountant"]), delta=float(delta), client_target_epsilon=target
    )
    clip = _positive(p, "max_grad_norm", allow_none=False)
    assert clip is not None
    log.info("Privacy: DP-SGD in clients, ledger %s", path)
    return SampleLevelDP(
        ledger=ledger,
        max_grad_norm=clip,
        planned_rounds=num_rounds,
        noise_multiplier=None if sigma is None else float(sigma),
        target_epsilon=target,
        grad_sample_mode=grad_mode,
    )


def _client_level(  # noqa: PLR0917  (the settings of one mechanism)
    p: dict[str, Any],
    conf: dict[str, Any],
    path: Path,
    delta: float,
    target: float | None,
    sigma: float | None,
    num_rounds: int,
) -> ClientLevelDP:
    q = p.get("sample_rate")
    q = float(conf["fraction_train"] if q is None else q)
    if not 0 < q <= 1:
        raise ValueError(f"privacy.sample_rate (q) must be in (0, 1], got {q}")
    ledger = PrivacyLedger.open(
        path, accountant=str(p["accountant"]), delta=delta, target_epsilon=target
    )
    if sigma is None:
        assert target is not None
        sigma = calibrate_noise_multiplier(
            target_epsilon=target,
            delta=delta,
            sample_rate=q,
            steps=num_rounds,
            accountant=ledger.accountant,
            spent=tuple(ledger.client_level),
        )
    entry = GaussianSteps(float(sigma), q, 1)
    fits = ledger.rounds_that_fit(entry, num_rounds)
    planned = ledger.client_level_epsilon(GaussianSteps(float(sigma), q, fits))
    log.info(
        "Privacy: client-level DP, sigma=%.4g q=%.4g C=%g: %d of %d rounds fit, epsilon %.4g "
        "(delta %g, %s; already spent %.4g), ledger %s",
        sigma,
        q,
        p["clip"],
        fits,
        num_rounds,
        planned,
        delta,
        ledger.accountant,
        ledger.client_level_epsilon(),
        path,
    )
    if fits < num_rounds:
        log.warning("Privacy budget allows %d of the %d planned rounds", fits, num_rounds)
    adaptive = (
        AdaptiveClipping(
            target_quantile=float(p["target_quantile"]),
            learning_rate=float(p["clip_learning_rate"]),
            count_noise_multiplier=float(p["count_noise_multiplier"]),
        )
        if p.get("adaptive_clip")
        else None
    )
    clip = _positive(p, "clip", allow_none=False)
    assert clip is not None
    return ClientLevelDP(
        ledger=ledger,
        noise_multiplier=float(sigma),
        sample_rate=q,
        clip=clip,
        adaptive=adaptive,
        selection_seed=int(conf["seed"]),
        noise_seed=p.get("noise_seed"),
    )
