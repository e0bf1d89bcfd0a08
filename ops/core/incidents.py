"""Incident lifecycle rules: when an incident nobody else closes has cleared. Pure, no I/O.

Every incident kind has a clear condition. Most are closed by whoever raised them, the
moment the condition is gone (a drift block lifted, a stream connected again, a process
healthy for `settle_s`, a valid config loaded, a role that got past its boot problem).
Two families cannot be closed that way, and the watchdog sweeps them every pass
(`sweep`):
- events, not states: a malformed stream message, an unknown event name, one event
  Postgres refused, two sources of one fill disagreeing (`EVENT_KINDS`). Their
  condition is "it happened"; it has cleared once it has not happened again for
  `quiet_s` (every repeat report moves `last_seen_at`, ops/store/ops.py).
- raised by a process not under supervision (a hand-run `ops run` with bad secrets, say):
  nothing will come back to close it. It closes once that process is gone (its pid is
  not alive on its host) and its condition has not been seen for `gone_quiet_s`.
Acknowledged incidents are swept by the same rules; acknowledging never closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

#: Incidents about something that happened once (see the module docstring).
EVENT_KINDS = frozenset({"stream-bad-message", "stream-unknown-event", "stream-store-failed",
                         "fill-mismatch", "fill-excess", "stream-backfill-orphan"})


@dataclass(frozen=True, slots=True)
class SweepPolicy:
    quiet_s: float = 3600.0  # an event incident not seen again this long has cleared
    gone_quiet_s: float = 60.0  # an unsupervised raiser gone, condition not seen this long


@dataclass(frozen=True, slots=True)
class Sweep:
    incident_id: str
    reason: str


def sweep(incidents: Sequence[IncidentRecord], *, now: datetime, host: str,
          alive: Callable[[int], bool], policy: SweepPolicy) -> list[Sweep]:
    """The open incidents whose condition has cleared, each with the reason recorded."""
    out: list[Sweep] = []
    for inc in incidents:
        if not inc.is_open:
            continue
        quiet = (now - inc.last_seen).total_seconds()
        if inc.kind in EVENT_KINDS and quiet >= policy.quiet_s:
            out.append(Sweep(inc.id, f"not seen again for {quiet:.0f}s "
                                     f"(bound {policy.quiet_s:g}s)"))
        elif (inc.supervised is False and inc.opened_pid is not None
              and inc.opened_host == host and not alive(inc.opened_pid)
              and quiet >= policy.gone_quiet_s):
            out.append(Sweep(inc.id, f"raised by pid {inc.opened_pid}, which was not under "
                                     "supervision and is gone; its condition has not been "
                                     f"seen for {quiet:.0f}s"))
    return out


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    id: str
    kind: str
    process: str | None
    account: str | None
    detail: str
    opened_at: datetime
    closed_at: datetime | None
    restarts: int
    dedupe_key: str | None
    seen_by: tuple[str, ...]
    last_seen_at: datetime | None
    opened_pid: int | None
    opened_host: str | None
    supervised: bool | None
    acked_at: datetime | None
    acked_by: str | None
    closed_by: str | None
    close_reason: str | None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None

    @property
    def last_seen(self) -> datetime:
        return self.last_seen_at or self.opened_at


__all__ = ["EVENT_KINDS", "IncidentRecord", "Sweep", "SweepPolicy", "sweep"]
