"""Gap status: is a process doing its work? A pure function of ages and flags, no I/O.

A *gap* is the time since a process's last completed run, judged against its expected
interval (`Config.role_interval`). `gap_status` folds that together with the supervisord
state, the heartbeat age, the market clock and the account's kill switch into one word:

    down                supervisord does not have it RUNNING (or STARTING)
    starting            just (re)started: no fresh heartbeat or run yet, within the grace
    stalled             RUNNING but the heartbeat is stale, or no completed run for longer
                        than the gap bound: hung or "alive but not trading"
    failing             RUNNING and on schedule, but its runs fail (ops.core.health): alive and
                        useless, as plainly an alarm as a crash
    paused              the account's kill switch is engaged (an operator decision)
    idle-market-closed  the market is closed: an expected idle, never an alarm
    late                runs complete, but later than the interval allows
    ok                  on schedule

`ops status`, the dashboard and the watchdog all use it, so they never disagree. The
readers (ops/commands/status.py) gather the inputs; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

GapStatus = Literal["ok", "late", "stalled", "failing", "idle-market-closed", "paused",
                   "starting", "down"]

#: How bad each status is: 0 fine, 1 needs watching, 2 needs action.
SEVERITY: Final[dict[GapStatus, int]] = {
    "ok": 0,
    "idle-market-closed": 0,
    "paused": 0,
    "starting": 1,
    "late": 1,
    "stalled": 2,
    "failing": 2,
    "down": 2,
}

_RUNNING_STATES = frozenset({"RUNNING"})
_STARTING_STATES = frozenset({"STARTING"})


#: Roles whose periodic work the account's kill switch holds back.
PAUSABLE_ROLES = frozenset({"dispatcher"})


@dataclass(frozen=True, slots=True)
class GapInput:
    """What is known about one process right now (ages in seconds, None = unknown/never)."""

    state: str  # supervisord state name: RUNNING, STARTING, BACKOFF, STOPPED, FATAL, ...
    uptime_s: float | None  # since supervisord last started it
    heartbeats: bool  # False for processes that never write heartbeats (postgres, sim)
    heartbeat_age_s: float | None
    last_run_age_s: float | None  # since the last completed run finished
    expected_interval_s: float | None  # None: no periodic job to judge
    market_open: bool | None  # None: unknown (treated as open: never hide a gap)
    paused: bool  # the account's kill switch is engaged
    failing: bool = False  # its runs fail (ops.core.health.failing)


@dataclass(frozen=True, slots=True)
class GapBounds:
    heartbeat_stale_s: float  # watchdog.heartbeat_stale_s
    startup_grace_s: float  # watchdog.startup_grace_s
    gap_bound_s: float | None = None  # watchdog.gap_bounds_s[role]: stalled beyond this


def late_after(interval_s: float) -> float:
    """Run age beyond which a process is late: two intervals, and never under interval+10 s.

    A run's age grows to one interval plus the job's duration before the next one lands,
    and a busy host adds scheduling noise; the 10 s floor keeps short demo intervals from
    flapping between ok and late.
    """
    return max(2.0 * interval_s, interval_s + 10.0)


def stalled_after(interval_s: float, gap_bound_s: float | None) -> float:
    """Run age beyond which a RUNNING process counts as stalled: the configured gap bound
    (never under one interval; the config requires it to exceed the interval anyway),
    else three times the late threshold. A bound tighter than `late_after` is honoured:
    the operator asked for a restart that soon (the display then skips "late")."""
    if gap_bound_s is None:
        return 3.0 * late_after(interval_s)
    return max(gap_bound_s, interval_s)


def gap_status(inp: GapInput, bounds: GapBounds) -> GapStatus:
    """The status word for one process; see the module docstring for the meaning of each."""
    if inp.state in _STARTING_STATES:
        return "starting"
    if inp.state not in _RUNNING_STATES:
        return "down"
    in_grace = inp.uptime_s is not None and inp.uptime_s < bounds.startup_grace_s
    if not inp.heartbeats:
        return "ok"
    hb_fresh = inp.heartbeat_age_s is not None and inp.heartbeat_age_s <= bounds.heartbeat_stale_s
    if not hb_fresh:
        return "starting" if in_grace else "stalled"
    if inp.failing:
        return "failing"
    if inp.paused:
        return "paused"
    if inp.expected_interval_s is None:
        return "ok"
    if inp.market_open is False:
        return "idle-market-closed"
    interval = inp.expected_interval_s
    age = inp.last_run_age_s
    stall = stalled_after(interval, bounds.gap_bound_s)
    if age is not None and age <= min(late_after(interval), stall):
        return "ok"
    # Just (re)started: a missing or old run says nothing yet about the new process. Give
    # it the startup grace plus the time a first run may take before judging the gap.
    if inp.uptime_s is not None and inp.uptime_s < bounds.startup_grace_s + late_after(interval):
        return "starting"
    if age is None:
        return "stalled"
    if age <= stall:
        return "late"
    return "stalled"


def worst(statuses: list[GapStatus]) -> int:
    """The highest severity among `statuses` (0 when empty)."""
    return max((SEVERITY[s] for s in statuses), default=0)
