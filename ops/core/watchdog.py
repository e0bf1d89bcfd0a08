"""The watchdog's decisions: a pure function of what it observed, what it remembers, and now.

Given one `Observed` per supervised process (supervisord state, ages of the heartbeat and
of the last completed run, market clock, kill switch), the supervisord process-state
events since the last pass, the `WatchState` carried over from the last pass and the
`Policy`, `decide` returns the actions to take (kill, start, open/bump/note/close an
incident) and the next state. No I/O and no clock: the listener (ops/roles/watchdog.py)
gathers the inputs and carries out the actions.

The verdict per process comes from `ops.core.gaps.gap_status`, so `ops status`, the dashboard
and the watchdog never disagree about what "stalled" means. On top of it:

- RUNNING + stalled, heartbeat stale or missing  -> kill (SIGKILL; autorestart acts), "hung"
- RUNNING + stalled, heartbeat fresh, no run     -> kill, "stalled" (alive but not trading)
- RUNNING + failing (its runs fail: ops.core.health)  -> incident "failing" naming the cause;
                                                    graceful restart (SIGTERM) at most
                                                    `failing_restarts` times within
                                                    `failing_restart_window_s`, then no more
                                                    restarts and an escalated alert: never
                                                    a crash loop
- BACKOFF, or an unexpected EXITED               -> incident ("crash-loop" / "exited")
- FATAL                                          -> incident noting FATAL; start attempts
                                                    with a doubling delay
- idle-market-closed / paused / ok               -> nothing; an open incident closes once
                                                    the process stayed healthy `settle_s`
- most of the fleet stalled at once (>= 3)       -> no kills; one "fleet-stalled" incident
                                                    (a shared cause: database, broker, host)
- Postgres unreachable past the stale bound      -> one "database-unreachable" incident
                                                    (`decide_database`)

A process has at most one watchdog incident open (dedupe key `watchdog:<process>`): a
restart loop bumps its restart count instead of opening hundreds.

One decision module, two drivers. The supervisord event listener (ops/roles/watchdog.py,
`Policy.acts` true) observes through supervisord and kills, restarts and starts. The
monitor role (ops/roles/monitor.py, `acts` false: one role per container, the
orchestrator restarts through `ops health`) observes from heartbeats alone
(`observe_heartbeat`: a row fresh or stale is RUNNING to the verdict, no row is MISSING)
and gets the same verdicts and incidents without the kills: stalled -> "hung"/"stalled",
failing -> "failing" (escalated once the orchestrator's restarts, seen as a new
incarnation in the heartbeat, reach `failing_restarts` within the window), no heartbeat
after the startup grace -> "missing"; fleet-stalled and database-unreachable alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Final

from ops.core.config import WatchdogConfig
from ops.core.gaps import GapBounds, GapInput, GapStatus, gap_status
from ops.core.models import Heartbeat, RunRecord

#: Statuses under which a process is doing what it should (an open incident may close).
HEALTHY: Final[frozenset[GapStatus]] = frozenset({"ok", "idle-market-closed", "paused"})
#: Run outcomes that prove the broker clock said "open" when the run happened.
_OPEN_OUTCOMES: Final = frozenset({"ok", "error", "timeout"})
INCIDENT_PREFIX: Final = "watchdog:"
#: State name and incident kind of "most of the fleet stalled at once" (not a process).
MASS_STALE: Final = "fleet-stalled"
#: State name and incident kind of "Postgres unreachable" (not a process either).
DATABASE: Final = "database-unreachable"
#: Fewer RUNNING heartbeating processes than this: every stalled one is judged on its own.
MASS_STALE_MIN: Final = 3
#: How often an open database-unreachable incident's text is updated (age, held back).
DATABASE_NOTE_S: Final = 30.0
#: Observed state of an expected process with no heartbeat row at all (no supervisord to
#: ask: the orchestrated layout). Not RUNNING, so its verdict is "down".
MISSING: Final = "MISSING"
#: A heartbeat row older than its stale bound, as `shown_state` words it (the verdict sees
#: RUNNING with a stale heartbeat: stalled).
STALE: Final = "STALE"


def incident_key(process: str) -> str:
    """The dedupe key of the watchdog's incident for `process`."""
    return INCIDENT_PREFIX + process


@dataclass(frozen=True, slots=True)
class Policy:
    """Bounds of the decisions (from `[watchdog]`); seconds throughout."""

    heartbeat_stale_s: float = 5.0
    startup_grace_s: float = 15.0
    gap_bounds_s: Mapping[str, float] = field(default_factory=dict)
    heartbeat_stale_by_role_s: Mapping[str, float] = field(default_factory=dict)
    settle_s: float = 20.0  # healthy this long before an incident closes (flap guard)
    kill_retry_s: float = 5.0  # the same pid still RUNNING this long after a kill: kill again
    start_delay_s: float = 30.0  # first start attempt of a FATAL process, then doubling
    start_delay_max_s: float = 600.0
    failing_restarts: int = 2  # restarts of a failing process within the window, then none
    failing_window_s: float = 600.0
    # The driver kills, restarts and starts (supervisord). False: it only observes (the
    # monitor; the orchestrator restarts), so no Kill/Restart/Start is ever decided.
    acts: bool = True

    @classmethod
    def from_config(cls, wd: WatchdogConfig, *, acts: bool = True) -> Policy:
        # A flapping process is one incident: it must stay healthy for its startup grace
        # plus a stale bound before the incident closes.
        return cls(
            acts=acts,
            heartbeat_stale_s=wd.heartbeat_stale_s,
            startup_grace_s=wd.startup_grace_s,
            gap_bounds_s=dict(wd.gap_bounds_s),
            heartbeat_stale_by_role_s=dict(wd.heartbeat_stale_by_role_s),
            settle_s=wd.startup_grace_s + wd.heartbeat_stale_s,
            failing_restarts=wd.failing_restarts,
            failing_window_s=wd.failing_restart_window_s,
        )

    def stale_for(self, role: str) -> float:
        return self.heartbeat_stale_by_role_s.get(role, self.heartbeat_stale_s)

    def bounds(self, role: str) -> GapBounds:
        return GapBounds(self.stale_for(role), self.startup_grace_s,
                         self.gap_bounds_s.get(role))


@dataclass(frozen=True, slots=True)
class Observed:
    """One supervised process as seen in this pass."""

    name: str  # program name, also the heartbeat/run `process`
    qualified: str  # group:name, what XML-RPC wants
    account: str | None
    role: str
    gap: GapInput
    pid: int = 0
    exitstatus: int = 0
    spawnerr: str = ""
    # The heartbeat says the process is still booting (runtime phase credentials, binding,
    # waiting-lock, building): no runs are due yet, e.g. while it waits for its singleton
    # lock during a Postgres outage. Judged on its heartbeat only, never on runs.
    booting: bool = False
    failure: str | None = None  # failing (ops.core.health.describe): the cause, the last error
    # Heartbeat-observed processes: when this instance started (the heartbeat's
    # started_at, epoch s); a new value is a restart the orchestrator made.
    incarnation: float | None = None
    # Stopped by a signal (SIGSTOP, SIGTSTP: state T in /proc, read by the supervisord
    # driver): hung for certain, whatever the rest of the fleet is doing.
    stopped: bool = False


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """A supervisord PROCESS_STATE_* event (the listener parses the header/payload)."""

    name: str
    from_state: str
    to_state: str  # RUNNING, BACKOFF, EXITED, FATAL, ...
    expected: bool | None = None  # EXITED only: exit code listed in `exitcodes`
    pid: int | None = None
    # EXITED only: how, from supervisord's log ("terminated by SIGKILL", "exit status 1");
    # the event itself carries no status (SupervisorClient.exit_causes).
    how: str | None = None


@dataclass(frozen=True, slots=True)
class IncidentMemo:
    key: str
    kind: str
    opened_at: float
    restarts: int = 0
    account: str | None = None


@dataclass(frozen=True, slots=True)
class Tracked:
    """What the watchdog remembers about one process between passes."""

    incident: IncidentMemo | None = None
    healthy_since: float | None = None
    killed_pid: int | None = None
    killed_at: float | None = None
    fatal_seen: bool = False
    start_attempts: int = 0
    next_start_at: float | None = None
    failing_restarts: tuple[float, ...] = ()  # when it was restarted for failing
    escalated: bool = False  # failing past its restarts: the alert escalated once
    incarnation: float | None = None  # last seen `Observed.incarnation`


WatchState = Mapping[str, Tracked]


@dataclass(frozen=True, slots=True)
class Kill:
    process: str
    qualified: str
    pid: int
    reason: str


@dataclass(frozen=True, slots=True)
class Restart:
    """A graceful restart (SIGTERM; supervisord's autorestart starts it again)."""

    process: str
    qualified: str
    pid: int
    reason: str


@dataclass(frozen=True, slots=True)
class Start:
    process: str
    qualified: str
    reason: str


@dataclass(frozen=True, slots=True)
class OpenIncident:
    key: str
    kind: str
    process: str | None  # None: about the host, not one process (mass-stale)
    account: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class BumpIncident:
    """One more restart during an open incident (detail replaces the old one)."""

    key: str
    process: str
    detail: str


@dataclass(frozen=True, slots=True)
class NoteIncident:
    """New facts about an open incident that are not a restart (e.g. it went FATAL)."""

    key: str
    process: str
    detail: str


@dataclass(frozen=True, slots=True)
class CloseIncident:
    key: str
    process: str | None
    kind: str
    duration_s: float
    restarts: int
    detail: str
    account: str | None = None


Action = Kill | Restart | Start | OpenIncident | BumpIncident | NoteIncident | CloseIncident


@dataclass(frozen=True, slots=True)
class Decision:
    actions: list[Action]
    state: dict[str, Tracked]
    statuses: dict[str, GapStatus]


def observe(
    *,
    name: str,
    qualified: str,
    account: str | None,
    role: str,
    state: str,
    pid: int,
    start: float,
    exitstatus: int,
    spawnerr: str,
    heartbeat: Heartbeat | None,
    run: RunRecord | None,
    expected_interval_s: float | None,
    paused: bool,
    heartbeats: bool,
    now: datetime,
    failure: str | None = None,
    stopped: bool = False,
) -> Observed:
    """Fold supervisord's info, the heartbeat and the last run into an `Observed`.

    A heartbeat written before this incarnation started proves nothing about it (the
    previous pid wrote it), so it is ignored; the market is judged open or closed from the
    last run's outcome (the ticker's gate recorded it), unknown without one.
    """
    now_s = now.timestamp()
    if heartbeat is not None and start and heartbeat.ts.timestamp() < start - 1:
        heartbeat = None
    market_open: bool | None = None
    if run is not None:
        market_open = (False if run.outcome == "idle-market-closed"
                       else True if run.outcome in _OPEN_OUTCOMES else None)
    finished = run.finished_at if run is not None else None
    gap = GapInput(
        state=state,
        uptime_s=max(0.0, now_s - start) if state == "RUNNING" and start else None,
        heartbeats=heartbeats,
        heartbeat_age_s=None if heartbeat is None else max(0.0, now_s - heartbeat.ts.timestamp()),
        last_run_age_s=None if finished is None else max(0.0, now_s - finished.timestamp()),
        expected_interval_s=expected_interval_s,
        market_open=market_open,
        paused=paused,
        failing=heartbeat is not None and failure is not None,
    )
    phase = heartbeat.counters.get("phase") if heartbeat is not None else None
    return Observed(name=name, qualified=qualified, account=account, role=role, gap=gap,
                    pid=pid, exitstatus=exitstatus, spawnerr=spawnerr,
                    booting=isinstance(phase, str) and phase != "running",
                    failure=failure if heartbeat is not None else None, stopped=stopped)


def observe_heartbeat(
    *,
    name: str,
    account: str | None,
    role: str,
    heartbeat: Heartbeat | None,
    run: RunRecord | None,
    expected_interval_s: float | None,
    paused: bool,
    now: datetime,
    startup_grace_s: float,
    watching_since: float | None = None,
    failure: str | None = None,
) -> Observed:
    """One process with no supervisord to ask (the orchestrated layout): its heartbeat row
    is all there is. A row, fresh or stale, is RUNNING to the verdict and its age decides
    (stale: stalled, i.e. hung or gone; only the orchestrator's health check can tell),
    uptime counted from its `started_at`. No row: MISSING (down), or STARTING while the
    observer is within its startup grace (`watching_since`, epoch s; None for a one-shot
    reader such as `ops status`, which says MISSING at once)."""
    if heartbeat is None:
        young = (watching_since is not None
                 and now.timestamp() - watching_since < startup_grace_s)
        finished = run.finished_at if run is not None else None
        gap = GapInput(state="STARTING" if young else MISSING, uptime_s=None, heartbeats=True,
                       heartbeat_age_s=None,
                       last_run_age_s=None if finished is None
                       else max(0.0, (now - finished).total_seconds()),
                       expected_interval_s=expected_interval_s, market_open=None,
                       paused=paused)
        return Observed(name=name, qualified=name, account=account, role=role, gap=gap)
    start = heartbeat.started_at.timestamp()
    o = observe(name=name, qualified=name, account=account, role=role, state="RUNNING",
                pid=heartbeat.pid, start=start, exitstatus=0, spawnerr="",
                heartbeat=heartbeat, run=run, expected_interval_s=expected_interval_s,
                paused=paused, heartbeats=True, now=now, failure=failure)
    return replace(o, incarnation=start)


def shown_state(p: Observed, policy: Policy) -> str:
    """The state word of a heartbeat-observed process: RUNNING (fresh heartbeat), STALE,
    MISSING or STARTING."""
    if p.gap.state != "RUNNING":
        return p.gap.state
    return "RUNNING" if _heartbeat_fresh(p, policy) else STALE


def verdict(p: Observed, policy: Policy) -> GapStatus:
    """The status of one observed process: `gap_status`, except that a process whose
    heartbeat says it is still booting (no runs due yet) is starting, not stalled."""
    status = gap_status(p.gap, policy.bounds(p.role))
    if status == "stalled" and p.booting and _heartbeat_fresh(p, policy):
        return "starting"
    return status


def _age(v: float | None) -> str:
    return "never" if v is None else f"{v:.1f}s"


def _heartbeat_fresh(p: Observed, policy: Policy) -> bool:
    age = p.gap.heartbeat_age_s
    return age is not None and age <= policy.stale_for(p.role)


def _stalled_reason(p: Observed, policy: Policy) -> tuple[str, str]:
    g = p.gap
    if not _heartbeat_fresh(p, policy):
        return "hung", (f"RUNNING but heartbeat {_age(g.heartbeat_age_s)} old "
                        f"(bound {policy.stale_for(p.role):g}s)")
    bound = policy.gap_bounds_s.get(p.role)
    return "stalled", (f"heartbeat fresh but no completed run for {_age(g.last_run_age_s)} "
                       f"(interval {g.expected_interval_s:g}s"
                       + (f", bound {bound:g}s)" if bound is not None else ")"))


def _fatal_detail(p: Observed) -> str:
    why = p.spawnerr or "exited too quickly"
    status = f" (last exit status {p.exitstatus})" if p.exitstatus else ""
    return f"FATAL: {why}{status}; supervisord gave up restarting"


def decide(
    observed: Sequence[Observed],
    events: Sequence[ProcessEvent],
    state: WatchState,
    policy: Policy,
    now: float,
) -> Decision:
    """The actions for this pass and the state to carry to the next one."""
    actions: list[Action] = []
    new_state: dict[str, Tracked] = {}
    statuses: dict[str, GapStatus] = {}
    by_name = {e.name for e in events}
    for p in observed:
        statuses[p.name] = verdict(p, policy)
    mass = _mass_stalled(observed, statuses, policy)
    for p in observed:
        st = state.get(p.name, Tracked())
        status = statuses[p.name]
        if p in mass:
            # Held back: see _mass_stalled. No verdict on the process itself this pass.
            new_state[p.name] = replace(st, healthy_since=None,
                                        incarnation=p.incarnation or st.incarnation)
            continue
        if not policy.acts:
            new_state[p.name] = _decide_watched(p, status, st, policy, now, actions)
            continue
        mine = [e for e in events if e.name == p.name] if p.name in by_name else []
        st = _decide_one(p, status, mine, st, policy, now, actions)
        new_state[p.name] = st
    _decide_mass(mass, observed, state.get(MASS_STALE, Tracked()), policy, now, actions,
                 new_state)
    if DATABASE in state:  # decided by decide_database, carried over untouched
        new_state[DATABASE] = state[DATABASE]
    # A process that left supervisord's config (or was renamed) cannot recover: close.
    seen = {p.name for p in observed} | {MASS_STALE, DATABASE}
    for name, st in state.items():
        if name in seen or st.incident is None:
            continue
        inc = st.incident
        why = ("process no longer supervised" if policy.acts
               else "process no longer expected (not in the config)")
        actions.append(CloseIncident(inc.key, name, inc.kind, now - inc.opened_at,
                                     inc.restarts, why, inc.account))
    return Decision(actions, new_state, statuses)


def _mass_stalled(
    observed: Sequence[Observed], statuses: Mapping[str, GapStatus], policy: Policy,
) -> list[Observed]:
    """The stalled processes, when most of the fleet stalled at once (else empty).

    One hung process is that process's fault. Most of them stalled together points at
    what they share: the database their heartbeats and run records are written to (slow,
    not down: a down one is buffered), the broker every job waits on, or the host (a
    paused VM). Killing them all would only add a restart storm to that trouble, so the
    watchdog raises one incident and restarts nobody while it lasts. A process stopped by
    a signal is not held back: it is hung whatever the others do (a loaded host can stall
    most of the fleet for a while; a stopped process never comes back by itself).
    """
    eligible = [p for p in observed
                if p.gap.state == "RUNNING" and p.gap.heartbeats and not p.stopped
                and p.gap.uptime_s is not None and p.gap.uptime_s >= policy.startup_grace_s]
    stalled = [p for p in eligible if statuses[p.name] == "stalled"]
    if len(eligible) >= MASS_STALE_MIN and 2 * len(stalled) > len(eligible):
        return stalled
    return []


def _decide_mass(
    mass: Sequence[Observed],
    observed: Sequence[Observed],
    st: Tracked,
    policy: Policy,
    now: float,
    actions: list[Action],
    new_state: dict[str, Tracked],
) -> None:
    key = incident_key(MASS_STALE)
    if mass:
        if st.incident is None:
            names = ", ".join(sorted(p.name for p in mass))
            running = sum(1 for p in observed if p.gap.state == "RUNNING" and p.gap.heartbeats)
            actions.append(OpenIncident(
                key, MASS_STALE, None, None,
                f"{len(mass)} of {running} processes stalled at once ({names}): suspect "
                "what they share (database, broker, host)"
                + ("; no restarts while it lasts" if policy.acts else "")))
            st = replace(st, incident=IncidentMemo(key, MASS_STALE, now))
        new_state[MASS_STALE] = replace(st, healthy_since=None)
        return
    if st.incident is None:
        return
    since = st.healthy_since if st.healthy_since is not None else now
    if now - since >= policy.settle_s:
        inc = st.incident
        actions.append(CloseIncident(key, None, inc.kind, now - inc.opened_at, inc.restarts,
                                     f"no mass stall for {now - since:.0f}s"))
        return
    new_state[MASS_STALE] = replace(st, healthy_since=since)


def _decide_one(
    p: Observed,
    status: GapStatus,
    events: Sequence[ProcessEvent],
    st: Tracked,
    policy: Policy,
    now: float,
    actions: list[Action],
) -> Tracked:
    key = incident_key(p.name)
    # Restarts supervisord made on its own since the last pass: each BACKOFF is a failed
    # start it will retry; an unexpected EXITED is a crash autorestart will undo. Our own
    # kill's EXITED event is not counted again.
    backoffs = sum(1 for e in events if e.to_state == "BACKOFF")
    crashes = [e for e in events if e.to_state == "EXITED" and e.expected is False
               and not (st.killed_pid is not None and e.pid == st.killed_pid)]

    def trouble(kind: str, detail: str, restarts: int) -> None:
        nonlocal st
        inc = st.incident
        if inc is None:
            actions.append(OpenIncident(key, kind, p.name, p.account, detail))
            inc = IncidentMemo(key, kind, now, account=p.account)
        actions.extend(BumpIncident(key, p.name, detail) for _ in range(restarts))
        st = replace(st, incident=replace(inc, restarts=inc.restarts + restarts))

    state = p.gap.state
    if state == "RUNNING" and status == "stalled":
        kind, detail = _stalled_reason(p, policy)
        recently = (st.killed_pid == p.pid and st.killed_at is not None
                    and now - st.killed_at < policy.kill_retry_s)
        st = replace(st, healthy_since=None)
        if not recently:
            detail = f"{detail}; killed pid {p.pid}"
            actions.append(Kill(p.name, p.qualified, p.pid, detail))
            st = replace(st, killed_pid=p.pid, killed_at=now)
            trouble(kind, detail, 1)
        return st
    if state == "RUNNING" and status == "failing":
        return _decide_failing(p, st, policy, now, actions)
    if crashes:
        e = crashes[-1]
        how = e.how or "how unknown: supervisord's log does not say"
        trouble("exited", f"exited unexpectedly from {e.from_state} ({how}"
                          f"{'' if e.pid is None else f', pid {e.pid}'}); autorestart",
                len(crashes))
    if backoffs:
        trouble("crash-loop", f"BACKOFF: exited before it counted as started "
                              f"({p.spawnerr or 'exit status ' + str(p.exitstatus)})",
                backoffs)
    if state == "BACKOFF" and st.incident is None:
        trouble("crash-loop", f"BACKOFF ({p.spawnerr or 'exit status ' + str(p.exitstatus)})",
                0)
    if state == "FATAL":
        st = replace(st, healthy_since=None)
        detail = _fatal_detail(p)
        if st.incident is None:
            trouble("fatal", detail, 0)
            st = replace(st, fatal_seen=True)
        elif not st.fatal_seen:
            actions.append(NoteIncident(key, p.name, detail))
            st = replace(st, fatal_seen=True)
        if st.next_start_at is None:
            st = replace(st, next_start_at=now + policy.start_delay_s)
        elif now >= st.next_start_at:
            n = st.start_attempts + 1
            actions.append(Start(p.name, p.qualified, f"start attempt {n} after FATAL"))
            delay = min(policy.start_delay_max_s, policy.start_delay_s * 2.0 ** n)
            st = replace(st, start_attempts=n, next_start_at=now + delay)
            trouble("fatal", f"{detail}; start attempt {n}", 1)
        return st
    if status in HEALTHY or state == "STOPPED":
        # STOPPED is an operator's decision (supervisorctl stop): expected, not an alarm.
        return _settle(p, status, st, policy, now, actions)
    # starting / late / transient states: no verdict yet, and not healthy either.
    return replace(st, healthy_since=None)


def _settle(p: Observed, status: GapStatus, st: Tracked, policy: Policy, now: float,
            actions: list[Action]) -> Tracked:
    """Healthy (or STOPPED): the open incident closes once healthy for `settle_s`."""
    stopped = p.gap.state == "STOPPED"
    since = st.healthy_since if st.healthy_since is not None else now
    st = replace(st, healthy_since=since, fatal_seen=False, start_attempts=0,
                 next_start_at=None, escalated=False)
    if st.incident is not None and (now - since >= policy.settle_s or stopped):
        inc = st.incident
        how = (f"healthy ({status}) for {now - since:.0f}s" if status in HEALTHY
               else "STOPPED by an operator")
        actions.append(CloseIncident(inc.key, p.name, inc.kind, now - inc.opened_at,
                                     inc.restarts, how, inc.account))
        st = replace(st, incident=None)
    return st


def _decide_watched(
    p: Observed, status: GapStatus, st: Tracked, policy: Policy, now: float,
    actions: list[Action],
) -> Tracked:
    """The monitor's verdict on one process (`policy.acts` false): the watchdog's incidents
    (same kinds and keys: one incident whoever raises it), no kills. Restarts are the
    orchestrator's, seen as a new incarnation in the heartbeat, and counted on the open
    incident."""
    key = incident_key(p.name)
    restarted = (p.incarnation is not None and st.incarnation is not None
                 and p.incarnation != st.incarnation)
    if p.incarnation is not None:
        st = replace(st, incarnation=p.incarnation)
    if restarted and st.incident is not None:
        actions.append(BumpIncident(key, p.name, f"{p.name} restarted (new instance, pid "
                                                 f"{p.pid}); {st.incident.kind} before"))
        st = replace(st, incident=replace(st.incident, restarts=st.incident.restarts + 1))

    def trouble(kind: str, detail: str) -> Tracked:
        if st.incident is not None:
            return replace(st, healthy_since=None)
        actions.append(OpenIncident(key, kind, p.name, p.account, detail))
        return replace(st, healthy_since=None,
                       incident=IncidentMemo(key, kind, now, account=p.account))

    state = p.gap.state
    if state == "RUNNING" and status == "stalled":
        kind, detail = _stalled_reason(p, policy)
        if kind == "hung":  # no supervisord to say RUNNING: the heartbeat is all there is
            detail = (f"heartbeat {_age(p.gap.heartbeat_age_s)} old (bound "
                      f"{policy.stale_for(p.role):g}s): hung, or gone without a trace")
        return trouble(kind, detail)
    if state == "RUNNING" and status == "failing":
        return _failing_watched(p, st, policy, now, actions, restarted)
    if state == MISSING:
        return trouble("missing", f"no heartbeat from {p.name} at all, "
                                  f"{policy.startup_grace_s:g}s after the monitor started: "
                                  "not deployed, or it never got as far as its first beat")
    if status in HEALTHY:
        return _settle(p, status, st, policy, now, actions)
    return replace(st, healthy_since=None)


def _failing_incident(p: Observed, st: Tracked, now: float, actions: list[Action]
                      ) -> Tracked:
    """The one incident of a failing process, whichever driver judges it: opened naming
    the cause, or, already open for something else (an exit, a hang), noted once."""
    key = incident_key(p.name)
    detail = f"failing: {p.failure or 'its runs fail'}"
    st = replace(st, healthy_since=None)
    if st.incident is None:
        actions.append(OpenIncident(key, "failing", p.name, p.account, detail))
        return replace(st, incident=IncidentMemo(key, "failing", now, account=p.account))
    if st.incident.kind != "failing":
        actions.append(NoteIncident(key, p.name, detail))
        return replace(st, incident=replace(st.incident, kind="failing"))
    return st


def _failing_watched(
    p: Observed, st: Tracked, policy: Policy, now: float, actions: list[Action],
    restarted: bool,
) -> Tracked:
    """Failing, seen by the monitor: the watchdog's one incident naming the cause; the
    alert escalates once the orchestrator has restarted it `failing_restarts` times within
    the window and it still fails (a restart does not fix this)."""
    key = incident_key(p.name)
    st = _failing_incident(p, st, now, actions)
    recent = tuple(t for t in st.failing_restarts if now - t < policy.failing_window_s)
    if restarted:
        recent = (*recent, now)
    if len(recent) >= policy.failing_restarts and not st.escalated:
        actions.append(NoteIncident(
            key, p.name,
            f"ESCALATED: {p.name} still failing after {len(recent)} restart(s) within "
            f"{policy.failing_window_s:.0f}s (restarts do not fix this); the incident stays "
            f"open until it recovers: {p.failure or 'its runs fail'}"))
        return replace(st, escalated=True, failing_restarts=recent)
    return replace(st, failing_restarts=recent)


def _decide_failing(
    p: Observed, st: Tracked, policy: Policy, now: float, actions: list[Action],
) -> Tracked:
    """Alive but failing its runs: one incident naming the cause; a graceful restart (a
    stuck pool or session may be the cause) at most `failing_restarts` times within the
    window; after that no more restarts, and the alert escalates once."""
    key = incident_key(p.name)
    detail = f"failing: {p.failure or 'its runs fail'}"
    st = _failing_incident(p, st, now, actions)
    recent = tuple(t for t in st.failing_restarts if now - t < policy.failing_window_s)
    just_restarted = (st.killed_pid == p.pid and st.killed_at is not None
                      and now - st.killed_at < policy.kill_retry_s)
    if just_restarted:
        return replace(st, failing_restarts=recent)
    if len(recent) < policy.failing_restarts:
        n = len(recent) + 1
        why = (f"{detail}; restarted pid {p.pid} (restart {n} of {policy.failing_restarts} "
               f"within {policy.failing_window_s:.0f}s)")
        actions.append(Restart(p.name, p.qualified, p.pid, why))
        actions.append(BumpIncident(key, p.name, why))
        memo = st.incident
        return replace(st, killed_pid=p.pid, killed_at=now, failing_restarts=(*recent, now),
                       incident=None if memo is None else replace(memo,
                                                                  restarts=memo.restarts + 1))
    if not st.escalated:
        actions.append(NoteIncident(
            key, p.name,
            f"ESCALATED: {p.name} still failing after {len(recent)} restart(s) within "
            f"{policy.failing_window_s:.0f}s; the watchdog no longer restarts it (a restart "
            f"does not fix this) and keeps the incident open until it recovers: "
            f"{p.failure or 'its runs fail'}"))
        return replace(st, escalated=True, failing_restarts=recent)
    return replace(st, failing_restarts=recent)


def decide_database(
    down_since: float | None,
    st: Tracked,
    policy: Policy,
    now: float,
    pending_rows: int,
    held: Sequence[str] = (),
) -> tuple[list[Action], Tracked]:
    """Postgres unreachable (since `down_since`, None = reachable) longer than the stale
    bound opens one incident; it closes once Postgres has answered for the stale bound.
    Nothing is lost meanwhile (writes are buffered), but nobody should learn of an outage
    from a dashboard by chance, nor what it holds back: `held` (the dispatchers' pauses,
    ops.core.health.DispatchPause) is in the text, updated every DATABASE_NOTE_S (an alert
    update; the stored text follows when Postgres can take it)."""
    key = incident_key(DATABASE)
    if down_since is not None:
        st = replace(st, healthy_since=None)
        detail = (f"Postgres unreachable for {now - down_since:.0f}s; writes are buffered "
                  f"locally ({pending_rows} rows pending) and replayed when it returns"
                  + (("; " + "; ".join(held)) if held else ""))
        if st.incident is None and now - down_since > policy.heartbeat_stale_s:
            return ([OpenIncident(key, DATABASE, None, None, detail)],
                    replace(st, incident=IncidentMemo(key, DATABASE, down_since),
                            killed_at=now))
        noted = st.killed_at  # reused: when the text was last updated
        if st.incident is not None and (noted is None or now - noted >= DATABASE_NOTE_S):
            return [NoteIncident(key, DATABASE, detail)], replace(st, killed_at=now)
        return [], st
    if st.incident is None:
        return [], st
    since = st.healthy_since if st.healthy_since is not None else now
    if now - since >= policy.heartbeat_stale_s:
        inc = st.incident
        return ([CloseIncident(key, None, DATABASE, now - inc.opened_at, 0,
                               f"Postgres answers again ({pending_rows} rows left to replay)")],
                Tracked())
    return [], replace(st, healthy_since=since)


def adopt_open(state: WatchState, open_keys: Mapping[str, tuple[str, float, int]]) -> dict[
        str, Tracked]:
    """Merge incidents found open in the store (key -> kind, opened_at, restarts) into the
    state, so a restarted watchdog continues (and later closes) the incidents it opened."""
    out = dict(state)
    for key, (kind, opened_at, restarts) in open_keys.items():
        if not key.startswith(INCIDENT_PREFIX):
            continue
        name = key[len(INCIDENT_PREFIX):]
        st = out.get(name, Tracked())
        if st.incident is None:
            out[name] = replace(st, incident=IncidentMemo(key, kind, opened_at, restarts))
    return out
