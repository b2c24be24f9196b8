"""What the server does about a suspicious node: warn, quarantine, reinstate, suspend.

Per node a small state machine, every decision with its reason (the audit log):

* ``ok`` -> ``warned`` when its suspicion reaches ``warn_at``;
* -> ``quarantined`` for ``ttl_rounds`` rounds (not selected, replies ignored) when it reaches
  ``quarantine_at``, or at once for a free-rider flag or a rolled-back round's suspect;
* -> ``ok`` again (``reinstate``, one strike more) when the TTL has passed;
* -> ``suspended`` (for good) at its ``suspend_after``-th quarantine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

STATES = ("ok", "warned", "quarantined", "suspended")


@dataclass(frozen=True)
class Decision:
    """One action on one node, and why."""

    round: int
    node: int
    action: str  # warn | quarantine | reinstate | suspend
    reason: str
    state: str  # the node's state after it


@dataclass
class NodeRecord:
    """A node's place in the state machine (serialized in the checkpoint)."""

    state: str = "ok"
    until: int = 0  # last round of the quarantine
    strikes: int = 0  # quarantines so far


class QuarantinePolicy:
    """Decisions from suspicion scores and flags (see the module docstring)."""

    def __init__(
        self,
        *,
        warn_at: float = 2.5,
        quarantine_at: float = 4.0,
        ttl_rounds: int = 5,
        suspend_after: int = 3,
    ) -> None:
        if not 0 < warn_at <= quarantine_at:
            raise ValueError(f"need 0 < warn_at <= quarantine_at, got {warn_at}, {quarantine_at}")
        if ttl_rounds < 1 or suspend_after < 1:
            raise ValueError(
                f"ttl_rounds and suspend_after must be >= 1, got {ttl_rounds}, {suspend_after}"
            )
        self.warn_at, self.quarantine_at = float(warn_at), float(quarantine_at)
        self.ttl_rounds, self.suspend_after = int(ttl_rounds), int(suspend_after)
        self.nodes: dict[int, NodeRecord] = {}

    def state(self, node: int) -> str:
        return self.nodes.get(node, NodeRecord()).state

    def is_excluded(self, node: int, server_round: int) -> bool:
        """Not selected and its replies ignored in ``server_round``."""
        rec = self.nodes.get(node)
        if rec is None:
            return False
        return rec.state == "suspended" or (
            rec.state == "quarantined" and server_round <= rec.until
        )

    def release(self, server_round: int) -> list[Decision]:
        """Reinstate every node whose quarantine ended before ``server_round``."""
        out = []
        for node, rec in sorted(self.nodes.items()):
            if rec.state == "quarantined" and server_round > rec.until:
                rec.state = "ok"
                why = f"quarantine ended after round {rec.until} (strike {rec.strikes})"
                out.append(Decision(server_round, node, "reinstate", why, "ok"))
        return out

    def decide(
        self, server_round: int, scores: Mapping[int, float], flags: Mapping[int, str]
    ) -> list[Decision]:
        """The decisions of a round: flags quarantine at once, scores by their thresholds."""
        out: list[Decision] = []
        for node in sorted(set(scores) | set(flags)):
            rec = self.nodes.setdefault(node, NodeRecord())
            if rec.state in ("suspended", "quarantined"):
                continue
            score = float(scores.get(node, 0.0))
            if node in flags or score >= self.quarantine_at:
                why = (
                    flags[node]
                    if node in flags
                    else f"suspicion {score:.2f} >= {self.quarantine_at:g}"
                )
                rec.strikes += 1
                if rec.strikes >= self.suspend_after:
                    rec.state = "suspended"
                    why = f"{why}; quarantine {rec.strikes}"
                    out.append(Decision(server_round, node, "suspend", why, rec.state))
                    continue
                rec.state, rec.until = "quarantined", server_round + self.ttl_rounds
                why = f"{why}; until round {rec.until}"
                out.append(Decision(server_round, node, "quarantine", why, rec.state))
            elif score >= self.warn_at and rec.state == "ok":
                rec.state = "warned"
                why = f"suspicion {score:.2f} >= {self.warn_at:g}"
                out.append(Decision(server_round, node, "warn", why, rec.state))
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"nodes": {str(k): asdict(v) for k, v in self.nodes.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        nodes = {}
        for key, rec in dict(state.get("nodes", {})).items():
            if rec.get("state") not in STATES:
                raise ValueError(f"node {key}: state {rec.get('state')!r} is not one of {STATES}")
            nodes[int(key)] = NodeRecord(str(rec["state"]), int(rec["until"]), int(rec["strikes"]))
        self.nodes = nodes


def audit_line(decision: Decision) -> str:
    """One JSON object (keys sorted; the node id as a string: it is a 64-bit integer)."""
    row = asdict(decision)
    row["node"] = str(decision.node)
    return json.dumps(row, sort_keys=True)
