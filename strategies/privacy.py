"""The strategy's privacy side: client-level DP (server mechanism) or sample-level DP-SGD.

Both keep one :class:`PrivacyLedger` (the only source of epsilon figures) and are stages
(:mod:`strategies.stage`): ``stop_reason`` before a round (check), then a record of every
spend (apply, record). Client-level DP fills two slots: the sampler (Poisson sampling, so
subsampling amplification applies) and the aggregation (the Gaussian mechanism on clipped
updates). Sample-level DP-SGD runs in the clients; its stage filters exhausted clients,
sends the DP-SGD settings, records what every client that trained spent, and refuses updates
whose spend cannot be attributed or went past the budget.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Message
from flwr.supercore import log

from fl_ext.privacy import (
    AdaptiveClipping,
    ClientLevelGaussian,
    GaussianSteps,
    PrivacyLedger,
)
from fl_ext.privacy.accountants import merged_history
from fl_ext.refusals import DECLINED
from fl_ext.rng_state import restore_rng, rng_state
from fl_ext.validation import Rejection, RejectReason
from strategies.aggregation import Aggregation
from strategies.replies import TrainReply, reported_metrics
from strategies.round import Round
from strategies.sampling import OverSelect, Sampler
from strategies.stage import ConfigValue, Stage


def restore_ledger_copy(ledger: PrivacyLedger, saved: dict[str, Any] | None) -> PrivacyLedger:
    """Keep the longer of the ledger file and a checkpoint's copy of it.

    The file is authoritative; if it recorded fewer rounds than the copy (lost or replaced),
    the copy is written back: spending never goes backwards.
    """
    if not saved or len(ledger.rounds) >= len(saved.get("rounds", [])):
        return ledger
    log(
        WARNING,
        "Privacy ledger %s has %d rounds, the checkpoint's copy %d: restoring the copy",
        ledger.path,
        len(ledger.rounds),
        len(saved["rounds"]),
    )
    if ledger.path is None:
        raise ValueError("the privacy ledger has no file to restore the checkpoint's copy into")
    Path(ledger.path).write_text(json.dumps(saved))
    return type(ledger).open(
        ledger.path,
        accountant=ledger.accountant,
        delta=ledger.delta,
        target_epsilon=ledger.target_epsilon,
        client_target_epsilon=ledger.client_target_epsilon,
    )


class ClientLevelDP(Sampler, Aggregation):
    """DP-FedAvg at the server: Poisson client sampling at ``sample_rate``, clip, noise.

    It takes the sampler and the aggregation slots; a robust rule or pre-aggregation cannot
    share the aggregation slot with it (the mechanism's sensitivity is that of the mean).
    """

    name = "privacy"

    def __init__(
        self,
        *,
        ledger: PrivacyLedger,
        noise_multiplier: float,
        sample_rate: float,
        clip: float,
        adaptive: AdaptiveClipping | None = None,
        selection_seed: int = 0,
        noise_seed: int | None = None,
    ) -> None:
        if not 0 < sample_rate <= 1:
            raise ValueError(f"privacy sample_rate (q) must be in (0, 1], got {sample_rate}")
        if not (math.isfinite(clip) and clip > 0):
            raise ValueError(f"privacy clip (C) must be > 0, got {clip}")
        self.ledger = ledger
        self.sample_rate = float(sample_rate)
        self.clip = float(clip)
        self.adaptive = adaptive
        ClientLevelGaussian(noise_multiplier, 1.0, adaptive)  # validates sigma and the split
        self.noise_multiplier = float(noise_multiplier)
        self.rng = np.random.default_rng(selection_seed)
        self.noise_seed = noise_seed
        seed = noise_seed if noise_seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)
        self.last: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        """Clip, the sampling generator and a copy of the ledger; never the noise generator.

        (See ``reseed_noise``.)
        """
        return {"clip": self.clip, "rng": rng_state(self.rng), "ledger": self.ledger.to_json()}

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        """Restore, and draw the coming rounds' noise from a new seed.

        Restoring the noise generator would repeat noise already drawn for other rounds
        (after a rollback: for released models), and the difference of two releases with the
        same noise cancels it. A fixed ``noise_seed`` (tests only) is mixed with the round.
        """
        self.clip = float(state["clip"])
        restore_rng(self.rng, state["rng"])
        self.ledger = restore_ledger_copy(self.ledger, state.get("ledger"))
        self.reseed_noise(first_round)

    def reseed_noise(self, first_round: int) -> None:
        """New noise for a restarted run (secret, or from ``noise_seed`` mixed with the round)."""
        seed = (
            secrets.randbits(63)
            if self.noise_seed is None
            else int(np.random.SeedSequence([self.noise_seed, first_round]).generate_state(1)[0])
        )
        self.generator = torch.Generator().manual_seed(seed)

    def entry(self) -> GaussianSteps:
        """One round: the Poisson-subsampled Gaussian mechanism, once."""
        return GaussianSteps(self.noise_multiplier, self.sample_rate, 1)

    def stop_reason(self, server_round: int, nodes: Sequence[int]) -> str | None:
        """Why training must stop before this round (the budget), or None."""
        if self.ledger.client_level_fits(self.entry()):
            return None
        return (
            f"privacy budget reached: round {server_round} would take client-level epsilon "
            f"to {self.ledger.client_level_epsilon(self.entry()):.4g} > target "
            f"{self.ledger.target_epsilon} (delta {self.ledger.delta:g}); stopped before it"
        )

    def sample(self, rnd: Round, eligible: list[int], *, over_select: OverSelect) -> list[int]:
        """Each node independently with probability q (Poisson sampling), all waited for."""
        nodes = sorted(eligible)
        draws = self.rng.random(len(nodes))
        selected = [n for n, u in zip(nodes, draws, strict=True) if u < self.sample_rate]
        rnd.needed = len(selected)  # no over-selection: every sampled node is waited for
        return selected

    def sample_size(self, num_nodes: int) -> int:
        return round(self.sample_rate * num_nodes)

    def min_inputs(self) -> int:
        return 0  # every round is released and accounted, even with few replies

    def preview(self, rnd: Round, stacked: torch.Tensor) -> torch.Tensor:
        """The mean of the clipped updates (the mechanism without its noise)."""
        norms = torch.linalg.vector_norm(stacked.double(), dim=1).clamp(min=1e-12)
        scale = (self.clip / norms).clamp(max=1.0).to(stacked.dtype)
        mean: torch.Tensor = (stacked * scale[:, None]).mean(dim=0)
        return mean

    def describe(self) -> str:
        return "client-level DP (Gaussian mechanism)"

    def aggregate(
        self, rnd: Round, updates: torch.Tensor, accepted: list[TrainReply]
    ) -> torch.Tensor:
        """Noised average of the clipped updates; records the spend in the ledger."""
        server_round = rnd.number
        expected = self.sample_rate * len(rnd.available)
        mechanism = ClientLevelGaussian(self.noise_multiplier, expected, self.adaptive)
        delta, next_clip, figures = mechanism(updates, self.clip, self.generator)
        details = {
            **figures,
            "dp_noise_multiplier": self.noise_multiplier,
            "dp_sample_rate": self.sample_rate,
            "dp_expected_clients": expected,
        }
        self.ledger.record_round(
            server_round,
            mechanism="client_level_gaussian",
            client_level=self.entry(),
            details=details,
        )
        self.clip = next_clip
        self.last = {k: float(v) for k, v in details.items()}
        return delta

    def metrics(self, rnd: Round) -> dict[str, float]:
        return {**self.last, **self.ledger.metrics()}

    def summary(self) -> str:
        return (
            f"client-level DP: q {self.sample_rate:g}, clip {self.clip:g}, "
            f"sigma {self.noise_multiplier:g}"
        )


def parse_dp_metrics(m: Mapping[str, Any]) -> tuple[str, GaussianSteps] | Rejection:
    """The (client key, spend) a DP-SGD reply's metrics report, or why they are unusable."""
    try:
        client = m["dp-client"]
        entry = GaussianSteps(
            float(m["dp-noise-multiplier"]), float(m["dp-sample-rate"]), int(m["dp-steps"])
        )
    except KeyError as err:
        return Rejection(RejectReason.BAD_METRIC, f"DP-SGD reply lacks {err.args[0]!r}")
    except (TypeError, ValueError) as err:
        return Rejection(RejectReason.BAD_METRIC, f"DP-SGD figures unusable: {err}")
    if isinstance(client, bool) or not isinstance(client, int) or client < 0:
        return Rejection(RejectReason.BAD_METRIC, f"dp-client must be an int >= 0, got {client!r}")
    return str(client), entry


class SampleLevelDP(Stage):
    """DP-SGD in every client; the server records spends, skips clients whose budget is spent."""

    name = "privacy"
    needs_fl_ext_client = True

    def __init__(
        self,
        *,
        ledger: PrivacyLedger,
        max_grad_norm: float,
        planned_rounds: int,
        noise_multiplier: float | None = None,
        target_epsilon: float | None = None,
        grad_sample_mode: str = "fused",
    ) -> None:
        if noise_multiplier is None and target_epsilon is None:
            raise ValueError("DP-SGD needs privacy.noise_multiplier or privacy.target_epsilon")
        self.ledger = ledger
        self.settings: dict[str, ConfigValue] = {
            "dp-mode": "dp_sgd",
            "dp-max-grad-norm": float(max_grad_norm),
            "dp-delta": ledger.delta,
            "dp-accountant": ledger.accountant,
            "dp-target-epsilon": float(target_epsilon or 0.0),
            "dp-noise-multiplier": -1.0 if noise_multiplier is None else float(noise_multiplier),
            "dp-planned-rounds": int(planned_rounds),
            "dp-grad-sample-mode": grad_sample_mode,
        }
        self.target_epsilon = target_epsilon
        self.node_keys: dict[int, str] = {}
        self.identity_changed: dict[int, str] = {}  # this round: node -> why its reply is refused
        self.over_budget: dict[int, str] = {}  # this round: spent past its budget -> not used
        self.exhausted: set[int] = set()
        self.last: dict[str, float] = {}

    def stop_reason(self, server_round: int, nodes: Sequence[int]) -> str | None:
        if nodes and all(n in self.exhausted for n in nodes):
            return (
                f"privacy budget reached: every client's sample-level budget "
                f"{self.target_epsilon} is spent; stopped before round {server_round}"
            )
        return None

    def eligible(self, rnd: Round, nodes: list[int]) -> list[int]:
        """Nodes whose budget is not known to be spent (the sampler then picks)."""
        return [n for n in nodes if n not in self.exhausted]

    def entries(self, rnd: Round) -> dict[str, ConfigValue]:
        spent = {
            c: [e.as_list() for e in merged_history(h)] for c, h in self.ledger.sample_level.items()
        }
        return {**self.settings, "dp-spent": json.dumps(spent)}

    def state_dict(self) -> dict[str, Any]:
        """Nodes known to be spent and the node -> client key map."""
        return {
            "exhausted": sorted(self.exhausted),
            "node_keys": {str(n): k for n, k in self.node_keys.items()},
            "ledger": self.ledger.to_json(),
        }

    def load_state_dict(self, state: dict[str, Any], *, first_round: int = 1) -> None:
        self.exhausted = {int(n) for n in state["exhausted"]}
        self.node_keys = {int(n): str(k) for n, k in state["node_keys"].items()}
        self.ledger = restore_ledger_copy(self.ledger, state.get("ledger"))

    def reseed_noise(self, first_round: int) -> None:
        """Nothing to do: the clients draw the DP-SGD noise."""

    def on_error(self, rnd: Round, node: int, code: int, reason: str) -> bool:
        """A client that declined to train (its budget is spent) is not asked again."""
        if code != DECLINED:
            return False
        self.exhausted.add(node)
        log(INFO, "\t> node %d declined: %s", node, reason)
        return True

    def on_replies(self, rnd: Round) -> None:
        self.record(rnd.number, rnd.replies)

    def record(self, server_round: int, replies: list[Message]) -> None:
        """Add the spend of every client that trained this round to the ledger.

        Every reply with readable DP figures counts -- also one that is late, dropped by the
        simulated network or rejected later: its client trained, so its data was used. The
        client's claimed epsilon is compared with the ledger's.
        """
        spends: dict[str, GaussianSteps] = {}
        claims: dict[int, float] = {}
        self.identity_changed = {}
        for msg in replies:
            metrics = reported_metrics(msg)
            if not metrics:
                continue
            parsed = parse_dp_metrics(metrics)
            if isinstance(parsed, Rejection):
                continue  # rejected as a reply; nothing trustworthy to record
            key, entry = parsed
            if key in spends:
                continue  # a second reply claiming the same client: the first one counts
            spends[key] = entry
            node = msg.metadata.src_node_id
            previous = self.node_keys.get(node)
            if previous is not None and previous != key:  # charged to the new claim, refused
                self.identity_changed[node] = (
                    f"node {node} reported DP client {previous} before and {key} now: its "
                    "privacy spend cannot be attributed; reply refused"
                )
                log(WARNING, "\t> %s", self.identity_changed[node])
                continue
            self.node_keys[node] = key
            claim = metrics.get("dp-epsilon")
            claims[node] = float(claim) if isinstance(claim, (int, float)) else math.nan
        # what clients spent is spent: recorded even past a budget (never raised), see below
        self.ledger.record_round(
            server_round, mechanism="dp_sgd", sample_level=spends, already_spent=True
        )
        self.over_budget = {}
        for node, claimed in claims.items():
            key = self.node_keys[node]
            eps = self.ledger.sample_level_epsilon(key)
            if not math.isclose(claimed, eps, rel_tol=0.01):
                log(WARNING, "client %s claims epsilon %.4g, ledger %.4g", key, claimed, eps)
            if self.ledger.sample_level_over_budget(key):
                self.over_budget[node] = (
                    f"client {key} spent epsilon {eps:.4g} past its budget {self.target_epsilon}: "
                    "recorded in the ledger, its update not used, the node not selected again"
                )
                log(WARNING, "\t> %s", self.over_budget[node])
                self.exhausted.add(node)
            elif self.target_epsilon is not None:
                last = self.ledger.sample_level[key][-1]
                if not self.ledger.sample_level_fits(key, last):
                    self.exhausted.add(node)  # its next round would not fit
        self.last = {"dp_clients_exhausted": float(len(self.exhausted))}

    def check(self, rnd: Round, reply: TrainReply) -> Rejection | None:
        """Unusable DP figures, or a node that changed the client identity it reports."""
        parsed = parse_dp_metrics(reply.metrics)
        if isinstance(parsed, Rejection):
            return parsed
        changed = self.identity_changed.get(reply.node_id)
        if changed:
            return Rejection(RejectReason.BAD_METRIC, changed)
        over = self.over_budget.get(reply.node_id)
        return Rejection(RejectReason.OVER_BUDGET, over) if over else None

    def metrics(self, rnd: Round) -> dict[str, float]:
        return {**self.last, **self.ledger.metrics()}

    def summary(self) -> str:
        return f"sample-level DP-SGD in the clients, target epsilon {self.target_epsilon}"


PrivacyPlan = ClientLevelDP | SampleLevelDP
