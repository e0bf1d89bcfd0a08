"""Outcome health: is a live process doing its work, or failing at it? Pure, no I/O.

Liveness is not health: a process can be RUNNING, heartbeating and completing runs on
schedule while every run fails (a revoked key, a broker refusing every call, a database
write failing every slot). Each ticker publishes its outcome counters in the heartbeat
(ops.runtime.ticker `TickerStats`: `errors_in_row`, `recent_runs`, `recent_errors`, `last_error`;
a process stuck binding its account publishes `binding.*` the same way), so `ops status`,
the watchdog, the metrics and the dashboard judge the same numbers, from Postgres or from
the outage buffer alike.

A process is `failing` when some job's last `failing_after_runs` runs failed, or when
more than `failing_share` of its recent runs (at least MIN_RECENT) failed, the latest one
included (so one good run after a fix clears it at once). `explain` turns the failure
text into the cause in words an operator acts on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ops.core.config import Config

MIN_RECENT = 5  # runs that did work before the failure share means anything


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    after_runs: int = 3
    share: float = 0.5

    @classmethod
    def from_config(cls, config: Config) -> FailurePolicy:
        wd = config.watchdog
        return cls(wd.failing_after_runs, wd.failing_share)


def secret_id_of(config: Config, account: str | None) -> str | None:
    """The configured secret id of `account` (named in causes; it holds no key material)."""
    acct = config.accounts.get(account or "")
    return acct.secret_id if acct is not None else None


def process_failure(config: Config, counters: Mapping[str, object],
                    account: str | None) -> str | None:
    """`describe` of the process's failure from its heartbeat counters, or None: the one
    judgement `ops status`, the watchdog and the dashboard share."""
    fail = failing(counters, FailurePolicy.from_config(config))
    if fail is None:
        return None
    return describe(fail, account=account, secret_id=secret_id_of(config, account))


@dataclass(frozen=True, slots=True)
class Failing:
    """Why a process is failing: its worst job."""

    job: str
    errors_in_row: int
    recent_runs: int
    recent_errors: int
    last_error: str

    def summary(self) -> str:
        if self.errors_in_row and self.recent_runs < MIN_RECENT:
            return f"its last {self.errors_in_row} {self.job} run(s) failed"
        return (f"{self.errors_in_row} {self.job} run(s) failed in a row, "
                f"{self.recent_errors} of the last {self.recent_runs}")


def _int(v: object) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def failing(counters: Mapping[str, object], policy: FailurePolicy) -> Failing | None:
    """The process's failure, judged from its heartbeat counters, or None when healthy."""
    worst: Failing | None = None
    for key, value in counters.items():
        if not key.endswith(".errors_in_row"):
            continue
        job = key[: -len(".errors_in_row")]
        in_row = _int(value)
        recent = _int(counters.get(f"{job}.recent_runs"))
        errors = _int(counters.get(f"{job}.recent_errors"))
        last = counters.get(f"{job}.last_error")
        by_row = in_row >= policy.after_runs
        by_share = (in_row >= 1 and recent >= MIN_RECENT
                    and errors > policy.share * recent)
        if not (by_row or by_share):
            continue
        f = Failing(job, in_row, recent, errors, last if isinstance(last, str) else "")
        if worst is None or (f.errors_in_row, f.recent_errors) > (worst.errors_in_row,
                                                                   worst.recent_errors):
            worst = f
    return worst


_HTTP = re.compile(r"\(HTTP (\d{3})(?:, code (\d+))?\)")


def explain(error: str, *, account: str | None, secret_id: str | None) -> str:
    """The cause of `error` (a run's failure text) in words an operator acts on; secret
    ids are named, never key material (the failure texts hold none: ops.broker.errors)."""
    text = error.strip()
    low = text.lower()
    m = _HTTP.search(text)
    status = int(m.group(1)) if m else None
    code = m.group(2) if m else None
    who = f"{account}'s" if account else "the"
    rotate = f": rotate the secret {secret_id}" if secret_id else ": rotate the API key"
    if status == 401 or "not authorized" in low or "unauthorized" in low:
        return f"the broker rejected {who} API key (401){rotate}"
    if status == 403 and code == "40310100":
        return ("the broker refused an order: pattern-day-trading protection (403 "
                "40310100)")
    if status == 403:
        return f"the broker refused the request (403{', code ' + code if code else ''})"
    if status == 429:
        return "the broker is rate-limiting this key (429): too many requests"
    if status is not None and status >= 500:
        return f"the broker answers {status} (a broker-side failure)"
    if "brokerunavailable" in low or "timed out" in low or "connection refused" in low:
        return "the broker does not answer (timeout or refused connection)"
    if any(k in low for k in ("postgres", "asyncpg", "connectiondoesnotexist",
                              "database")):
        return "database writes or reads are failing"
    if "storageunavailable" in low or "bufferunwritable" in low:
        return "neither Postgres nor the local buffer can take writes"
    return "its runs raise an error"


def describe(f: Failing, *, account: str | None, secret_id: str | None) -> str:
    """One line for status reasons and incidents: the cause, what failed, the last error."""
    cause = explain(f.last_error, account=account, secret_id=secret_id)
    last = f.last_error if len(f.last_error) <= 200 else f.last_error[:199] + "…"
    return f"{cause} ({f.summary()}; last error: {last or 'none recorded'})"


@dataclass(frozen=True, slots=True)
class DispatchPause:
    """A dispatcher that cannot claim signals (Postgres away, or its buffer draining):
    what an outage holds back, from the dispatcher's heartbeat counters."""

    account: str | None
    reason: str
    for_s: float
    signals_waiting: int

    def describe(self) -> str:
        who = f"{self.account}: " if self.account else ""
        return (f"{who}dispatch paused: {self.reason} for {self.for_s:.0f}s, "
                f"{self.signals_waiting} signal(s) waiting")


def dispatch_pause(counters: Mapping[str, object], account: str | None) -> DispatchPause | None:
    """The dispatcher's pause (ops.roles.dispatcher counters), or None when dispatching."""
    if counters.get("dispatcher.dispatch_paused") != 1:
        return None
    reason = counters.get("dispatcher.dispatch_paused_reason")
    for_s = counters.get("dispatcher.dispatch_paused_for_s")
    waiting = counters.get("dispatcher.signals_waiting")
    return DispatchPause(account, reason if isinstance(reason, str) and reason else "paused",
                         float(for_s) if isinstance(for_s, int | float) else 0.0,
                         _int(waiting))


__all__ = ["MIN_RECENT", "DispatchPause", "FailurePolicy", "Failing", "describe",
           "dispatch_pause", "explain", "failing", "process_failure", "secret_id_of"]
