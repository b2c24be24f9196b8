"""The privacy ledger: every spend of the federation, persisted, and the only source of epsilon.

Two guarantees are tracked:

* client-level (who took part is protected): one history for the federation, one entry per
  round of the server's Gaussian mechanism on clipped client updates, or of the distributed
  Skellam mechanism under secure aggregation (:class:`~fl_ext.privacy.skellam.SkellamSteps`;
  a history with one is composed by RDP whatever the accountant, and the round's record says
  so with ``"composed_by": "rdp"``);
* sample-level (each example is protected): one history per client, from the DP-SGD steps its
  own data went through. Clients hold disjoint data, so by parallel composition the
  federation's sample-level guarantee is the worst client's: ``max_i epsilon_i`` at the same
  delta (a sample belongs to one client; the other clients' mechanisms never touch it).

Check, then apply, then record (dp-accounting's ``compose``): a spend that would cross a budget
raises :class:`BudgetExceeded` and changes nothing. The file is rewritten atomically after every
recorded round and read back on restart, so a restarted run goes on spending from where the
last one stopped -- privacy spent on the same data adds up.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fl_ext.privacy.accountants import (
    GaussianSteps,
    HistoryEntry,
    check_accountant,
    check_delta,
    composed_by,
    compute_epsilon,
    entry_from_json,
    entry_to_json,
    merged_history,
)

FORMAT = "fl-ext-privacy-ledger/1"


class BudgetExceeded(RuntimeError):
    """A spend would take a guarantee past its budget; nothing was recorded."""


def _check_budget(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0 (or null for no budget), got {value!r}")
    return float(value)


class PrivacyLedger:
    """Histories, per-round records and budgets; see the module docstring."""

    def __init__(
        self,
        *,
        accountant: str,
        delta: float,
        target_epsilon: float | None = None,
        client_target_epsilon: float | None = None,
        path: str | Path | None = None,
    ) -> None:
        self.accountant = check_accountant(accountant)
        self.delta = check_delta(delta)
        self.target_epsilon = _check_budget("target_epsilon", target_epsilon)
        self.client_target_epsilon = _check_budget("client_target_epsilon", client_target_epsilon)
        self.path = None if path is None else Path(path)
        self.client_level: list[HistoryEntry] = []
        self.sample_level: dict[str, list[GaussianSteps]] = {}
        self.rounds: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- epsilon
    def client_level_epsilon(self, extra: HistoryEntry | None = None) -> float:
        history = [*self.client_level, *([extra] if extra else [])]
        return compute_epsilon(history, self.delta, self.accountant)

    def sample_level_epsilon(self, client: str, extra: GaussianSteps | None = None) -> float:
        history = [*self.sample_level.get(client, []), *([extra] if extra else [])]
        return compute_epsilon(history, self.delta, self.accountant)

    def max_sample_level_epsilon(self) -> float:
        """The federation's sample-level epsilon: the worst client (parallel composition)."""
        return max((self.sample_level_epsilon(c) for c in self.sample_level), default=0.0)

    # ------------------------------------------------------------------ budgets
    def client_level_fits(self, entry: HistoryEntry) -> bool:
        return self.target_epsilon is None or (
            self.client_level_epsilon(entry) <= self.target_epsilon
        )

    def sample_level_fits(self, client: str, entry: GaussianSteps) -> bool:
        return self.client_target_epsilon is None or (
            self.sample_level_epsilon(client, entry) <= self.client_target_epsilon
        )

    def rounds_that_fit(self, entry: HistoryEntry, limit: int) -> int:
        """How many more rounds of ``entry`` the client-level budget allows (up to ``limit``)."""
        if self.target_epsilon is None:
            return limit
        fits = 0
        while fits < limit and self.client_level_fits(entry.with_steps(entry.steps * (fits + 1))):
            fits += 1
        return fits

    def sample_level_rounds_that_fit(self, client: str, entry: GaussianSteps, limit: int) -> int:
        """How many more rounds of ``entry`` client ``client``'s budget allows (up to ``limit``)."""
        if self.client_target_epsilon is None:
            return limit
        fits = 0
        while fits < limit and self.sample_level_fits(
            client,
            GaussianSteps(entry.noise_multiplier, entry.sample_rate, entry.steps * (fits + 1)),
        ):
            fits += 1
        return fits

    # ------------------------------------------------------------------- record
    def record_round(
        self,
        server_round: int,
        *,
        mechanism: str,
        client_level: HistoryEntry | None = None,
        sample_level: Mapping[str, GaussianSteps] | None = None,
        details: Mapping[str, float | int | str] | None = None,
        already_spent: bool = False,
    ) -> dict[str, Any]:
        """Check every spend against its budget, then add them all and persist.

        ``already_spent``: the sample-level spends were made by clients before the server
        saw them (DP-SGD ran on their data): they are recorded whatever the budget says (the
        ledger must never hide a spend) and the caller decides what to do with the clients
        that went over (:meth:`sample_level_over_budget`). A client-level spend is the
        server's own and always checked before it is applied.
        """
        sample_level = dict(sample_level or {})
        for client, entry in sample_level.items():
            if not isinstance(entry, GaussianSteps):  # DP-SGD is Gaussian; files expect it
                raise ValueError(f"sample-level entry of client {client} must be GaussianSteps")
        if client_level is not None and not self.client_level_fits(client_level):
            raise BudgetExceeded(
                f"round {server_round} would take client-level epsilon to "
                f"{self.client_level_epsilon(client_level):.4g} > budget {self.target_epsilon}"
            )
        over = [c for c, e in sample_level.items() if not self.sample_level_fits(c, e)]
        if over and not already_spent:
            raise BudgetExceeded(
                f"round {server_round} would exceed the sample-level budget "
                f"{self.client_target_epsilon} of client(s) {', '.join(sorted(over))}"
            )
        if client_level is not None:
            self.client_level.append(client_level)
        for client, entry in sample_level.items():
            self.sample_level.setdefault(client, []).append(entry)
        record: dict[str, Any] = {
            "round": server_round,
            "mechanism": mechanism,
            "accountant": self.accountant,
            "delta": self.delta,
            "client_level": None if client_level is None else entry_to_json(client_level),
            "client_level_epsilon": self.client_level_epsilon(),
            **self._composed_by(),
            "sample_level": {c: e.as_list() for c, e in sample_level.items()},
            "sample_level_epsilon": {c: self.sample_level_epsilon(c) for c in sample_level},
            "sample_level_epsilon_max": self.max_sample_level_epsilon(),
            **dict(details or {}),
        }
        self.rounds.append(record)
        self.save()
        return record

    def _composed_by(self) -> dict[str, str]:
        """``{"composed_by": "rdp"}`` once the client-level history holds a Skellam entry.

        Such a history is composed by RDP whatever the accountant. A Gaussian-only history adds
        nothing: its records stay as they were (the record's ``accountant`` composed it).
        """
        if all(isinstance(e, GaussianSteps) for e in merged_history(self.client_level)):
            return {}
        return {"composed_by": composed_by(self.client_level, self.accountant)}

    def sample_level_over_budget(self, client: str) -> bool:
        """Whether ``client``'s recorded spend is past its sample-level budget."""
        if self.client_target_epsilon is None:
            return False
        return self.sample_level_epsilon(client) > self.client_target_epsilon * (1 + 1e-9)

    def metrics(self) -> dict[str, float]:
        """Figures for MLflow, all computed here."""
        out = {"dp_delta": self.delta}
        if self.client_level:
            out["dp_epsilon_client_level"] = self.client_level_epsilon()
        if self.sample_level:
            out["dp_epsilon_sample_level_max"] = self.max_sample_level_epsilon()
        return out

    # -------------------------------------------------------------- persistence
    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "accountant": self.accountant,
            "delta": self.delta,
            "target_epsilon": self.target_epsilon,
            "client_target_epsilon": self.client_target_epsilon,
            "client_level": [entry_to_json(e) for e in self.client_level],
            "sample_level": {c: [e.as_list() for e in h] for c, h in self.sample_level.items()},
            "rounds": self.rounds,
        }

    def save(self) -> None:
        """Write the ledger atomically (temp file + rename) if it has a path."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ledger-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.to_json(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        accountant: str,
        delta: float,
        target_epsilon: float | None = None,
        client_target_epsilon: float | None = None,
    ) -> PrivacyLedger:
        """The ledger at ``path`` if one is there (same accountant and delta), else a new one.

        Budgets come from the caller (a new run may set a different budget; what was spent
        stays spent).
        """
        ledger = cls(
            accountant=accountant,
            delta=delta,
            target_epsilon=target_epsilon,
            client_target_epsilon=client_target_epsilon,
            path=path,
        )
        p = Path(path)
        if not p.exists():
            return ledger
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"privacy ledger {p} cannot be read: {err}") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{p} is not an fl-ext privacy ledger ({FORMAT})")
        for key, want in (("accountant", accountant), ("delta", float(delta))):
            if data.get(key) != want:
                raise ValueError(
                    f"privacy ledger {p} was kept with {key}={data.get(key)!r}, this run asks "
                    f"for {want!r}: use the same {key}, or another ledger path"
                )
        try:
            ledger.client_level = [entry_from_json(e) for e in data["client_level"]]
            ledger.sample_level = {
                str(c): [GaussianSteps.from_list(e) for e in h]
                for c, h in data["sample_level"].items()
            }
            rounds = data["rounds"]
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise ValueError(f"privacy ledger {p} is malformed: {err}") from err
        if not isinstance(rounds, list):
            raise ValueError(f"privacy ledger {p} is malformed: rounds is not a list")
        ledger.rounds = rounds
        return ledger
