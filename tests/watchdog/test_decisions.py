"""ops.core.watchdog.decide: the watchdog's pure decisions, by example and by hypothesis."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.gaps import GapInput
from ops.core.watchdog import (
    HEALTHY,
    Action,
    BumpIncident,
    CloseIncident,
    Kill,
    NoteIncident,
    Observed,
    OpenIncident,
    Policy,
    ProcessEvent,
    Restart,
    Start,
    Tracked,
    WatchState,
    adopt_open,
    decide,
    incident_key,
)

POLICY = Policy(heartbeat_stale_s=5.0, startup_grace_s=15.0,
                gap_bounds_s={"dispatcher": 20.0}, settle_s=20.0)


def proc(
    state: str = "RUNNING", *, hb: float | None = 1.0, run: float | None = 1.0,
    uptime: float | None = 100.0, market_open: bool | None = True, paused: bool = False,
    pid: int = 100, name: str = "large-dispatcher", interval: float | None = 2.0,
    spawnerr: str = "",
) -> Observed:
    return Observed(
        name=name, qualified=f"large:{name}", account="large", role="dispatcher",
        gap=GapInput(state=state, uptime_s=uptime if state == "RUNNING" else None,
                     heartbeats=True, heartbeat_age_s=hb, last_run_age_s=run,
                     expected_interval_s=interval, market_open=market_open, paused=paused),
        pid=pid, exitstatus=1, spawnerr=spawnerr,
    )


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_sigstopped_process_is_killed_and_an_incident_opened() -> None:
    d = decide([proc(hb=6.0)], [], {}, POLICY, now=1000.0)
    assert kinds(d.actions) == ["Kill", "OpenIncident", "BumpIncident"]
    kill = d.actions[0]
    assert isinstance(kill, Kill) and kill.pid == 100 and kill.qualified == "large:large-dispatcher"
    opened = d.actions[1]
    assert isinstance(opened, OpenIncident) and opened.kind == "hung"
    assert opened.key == incident_key("large-dispatcher") and "heartbeat 6.0s" in opened.detail
    assert d.statuses["large-dispatcher"] == "stalled"


def test_fresh_heartbeat_without_runs_is_stalled_not_hung() -> None:
    d = decide([proc(hb=0.5, run=25.0)], [], {}, POLICY, now=1000.0)
    assert kinds(d.actions) == ["Kill", "OpenIncident", "BumpIncident"]
    opened = d.actions[1]
    assert isinstance(opened, OpenIncident) and opened.kind == "stalled"
    assert "no completed run for 25.0s" in opened.detail


def test_the_same_pid_is_not_killed_twice_within_kill_retry() -> None:
    d1 = decide([proc(hb=6.0)], [], {}, POLICY, now=1000.0)
    d2 = decide([proc(hb=7.0)], [], d1.state, POLICY, now=1002.0)
    assert d2.actions == []
    d3 = decide([proc(hb=12.0)], [], d2.state, POLICY, now=1006.0)
    assert kinds(d3.actions) == ["Kill", "BumpIncident"]  # still the same pid: kill again


def test_restart_closes_after_settle_with_duration_and_restarts() -> None:
    d = decide([proc(hb=6.0)], [], {}, POLICY, now=1000.0)
    # The new incarnation: in grace, then healthy.
    d = decide([proc(hb=None, uptime=1.0, pid=200)], [], d.state, POLICY, now=1002.0)
    assert d.actions == [] and d.statuses["large-dispatcher"] == "starting"
    d = decide([proc(pid=200, uptime=5.0)], [], d.state, POLICY, now=1005.0)
    assert d.actions == []
    d = decide([proc(pid=200, uptime=25.0)], [], d.state, POLICY, now=1025.0)
    assert kinds(d.actions) == ["CloseIncident"]
    close = d.actions[0]
    assert isinstance(close, CloseIncident)
    assert close.duration_s == 25.0 and close.restarts == 1 and close.kind == "hung"
    assert d.state["large-dispatcher"].incident is None


def test_crash_on_start_is_one_incident_and_fatal_is_noted() -> None:
    state: WatchState = {}
    actions: list[Action] = []
    now = 1000.0
    for _ in range(5):
        ev = [ProcessEvent("large-dispatcher", "STARTING", "BACKOFF")]
        d = decide([proc("BACKOFF", spawnerr="Exited too quickly")], ev, state, POLICY, now)
        actions += d.actions
        state = d.state
        now += 2
    d = decide([proc("FATAL", spawnerr="Exited too quickly")],
               [ProcessEvent("large-dispatcher", "BACKOFF", "FATAL")], state, POLICY, now)
    actions += d.actions
    assert kinds(actions).count("OpenIncident") == 1
    assert kinds(actions).count("BumpIncident") == 5
    notes = [a for a in actions if isinstance(a, NoteIncident)]
    assert len(notes) == 1 and notes[0].detail.startswith("FATAL: Exited too quickly")
    # FATAL persists: one start attempt after start_delay_s, then a doubled delay.
    state = d.state
    d = decide([proc("FATAL")], [], state, POLICY, now + 1)
    assert d.actions == []
    d = decide([proc("FATAL")], [], d.state, POLICY, now + POLICY.start_delay_s)
    assert kinds(d.actions) == ["Start", "BumpIncident"]
    d = decide([proc("FATAL")], [], d.state, POLICY, now + POLICY.start_delay_s + 30)
    assert d.actions == []


def test_fatal_seen_first_opens_a_fatal_incident() -> None:
    d = decide([proc("FATAL", spawnerr="can't find command 'nope'")], [], {}, POLICY, 0.0)
    assert kinds(d.actions) == ["OpenIncident"]
    opened = d.actions[0]
    assert isinstance(opened, OpenIncident) and opened.kind == "fatal"
    assert "can't find command" in opened.detail


def test_unexpected_exit_opens_but_our_own_kill_is_not_counted_twice() -> None:
    d = decide([proc(hb=6.0)], [], {}, POLICY, now=1000.0)
    ours = ProcessEvent("large-dispatcher", "RUNNING", "EXITED", expected=False, pid=100)
    d = decide([proc(hb=None, uptime=0.5, pid=200)], [ours], d.state, POLICY, now=1001.0)
    assert d.actions == []
    crash = ProcessEvent("large-dispatcher", "RUNNING", "EXITED", expected=False, pid=200)
    d = decide([proc(hb=None, uptime=0.2, pid=300)], [crash], d.state, POLICY, now=1003.0)
    assert kinds(d.actions) == ["BumpIncident"]
    clean = ProcessEvent("other", "RUNNING", "EXITED", expected=True, pid=5)
    d2 = decide([proc(name="other")], [clean], {}, POLICY, now=1003.0)
    assert d2.actions == []


def test_a_booting_process_is_judged_on_its_heartbeat_only() -> None:
    import dataclasses

    waiting = dataclasses.replace(proc(hb=0.5, run=500.0), booting=True)
    d = decide([waiting], [], {}, POLICY, now=1000.0)
    assert d.actions == [] and d.statuses["large-dispatcher"] == "starting"
    hung = dataclasses.replace(proc(hb=9.0, run=500.0), booting=True)
    assert kinds(decide([hung], [], {}, POLICY, now=1000.0).actions)[0] == "Kill"


def test_market_closed_and_paused_are_expected_idle() -> None:
    for p in (proc(run=3600.0, market_open=False), proc(run=3600.0, paused=True)):
        d = decide([p], [], {}, POLICY, now=1000.0)
        assert d.actions == []
        assert d.statuses["large-dispatcher"] in ("idle-market-closed", "paused")


def test_operator_stop_closes_and_disappearance_closes() -> None:
    d = decide([proc(hb=6.0)], [], {}, POLICY, now=1000.0)
    d2 = decide([proc("STOPPED")], [], d.state, POLICY, now=1001.0)
    assert kinds(d2.actions) == ["CloseIncident"]
    d3 = decide([], [], d.state, POLICY, now=1001.0)
    assert kinds(d3.actions) == ["CloseIncident"]


def test_adopt_open_resumes_incidents_of_a_previous_watchdog() -> None:
    state = adopt_open({}, {incident_key("large-dispatcher"): ("hung", 900.0, 2),
                            "drift:large": ("drift", 900.0, 0)})
    assert set(state) == {"large-dispatcher"}
    d = decide([proc()], [], state, POLICY, now=1000.0)
    d = decide([proc()], [], d.state, POLICY, now=1000.0 + POLICY.settle_s)
    close = d.actions[0]
    assert isinstance(close, CloseIncident) and close.duration_s == 100.0 + POLICY.settle_s
    assert close.restarts == 2


# --- properties ------------------------------------------------------------------------------

STATES = ["RUNNING", "STARTING", "BACKOFF", "STOPPED", "EXITED", "FATAL", "STOPPING"]
ages = st.one_of(st.none(), st.floats(min_value=0, max_value=10_000))


@st.composite
def observations(draw: st.DrawFn) -> Observed:
    return proc(
        draw(st.sampled_from(STATES)), hb=draw(ages), run=draw(ages),
        uptime=draw(st.one_of(st.none(), st.floats(min_value=0, max_value=10_000))),
        market_open=draw(st.one_of(st.none(), st.booleans())), paused=draw(st.booleans()),
        pid=draw(st.integers(min_value=1, max_value=4)),
        interval=draw(st.one_of(st.none(), st.sampled_from([1.0, 2.0, 5.0, 60.0]))),
    )


events = st.lists(st.builds(
    ProcessEvent, name=st.just("large-dispatcher"), from_state=st.sampled_from(STATES),
    to_state=st.sampled_from(STATES), expected=st.one_of(st.none(), st.booleans()),
    pid=st.one_of(st.none(), st.integers(min_value=1, max_value=4)),
), max_size=3)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(observations(), events,
                          st.floats(min_value=0.1, max_value=30.0)), min_size=1, max_size=25))
def test_any_history_keeps_the_incident_bookkeeping_consistent(
    steps: list[tuple[Observed, list[ProcessEvent], float]],
) -> None:
    state: WatchState = {}
    now = 1000.0
    open_ = False
    for obs, evs, dt in steps:
        now += dt
        d = decide([obs], evs, state, POLICY, now)
        status = d.statuses[obs.name]
        for a in d.actions:
            if isinstance(a, OpenIncident):
                assert not open_, "a second incident for a process with one open"
                open_ = True
            elif isinstance(a, CloseIncident):
                assert open_, "closing an incident that is not open"
                open_ = False
            elif isinstance(a, BumpIncident | NoteIncident):
                assert open_, "bumping an incident that is not open"
            elif isinstance(a, Kill):
                # Only a RUNNING process the verdict calls stalled is ever killed.
                assert obs.gap.state == "RUNNING" and status == "stalled"
                assert a.pid == obs.pid
            elif isinstance(a, Start):
                assert obs.gap.state == "FATAL"
        assert (d.state[obs.name].incident is not None) == open_
        if status in HEALTHY and not evs:
            assert not any(isinstance(a, Kill | Start | OpenIncident | BumpIncident)
                           for a in d.actions)
        state = d.state


@settings(max_examples=200, deadline=None)
@given(hb=st.floats(min_value=5.01, max_value=1000), uptime=st.floats(min_value=15, max_value=1e5),
       market_open=st.one_of(st.none(), st.booleans()), paused=st.booleans(), run=ages)
def test_a_stale_heartbeat_past_grace_is_always_killed(
    hb: float, uptime: float, market_open: bool | None, paused: bool, run: float | None,
) -> None:
    # Market closed or paused does not hide a hung process: its loop is not running.
    d = decide([proc(hb=hb, uptime=uptime, market_open=market_open, paused=paused, run=run)],
               [], {}, POLICY, now=5000.0)
    assert kinds(d.actions)[:2] == ["Kill", "OpenIncident"]


@settings(max_examples=200, deadline=None)
@given(hb=st.floats(min_value=0, max_value=5.0), run=ages,
       uptime=st.floats(min_value=0, max_value=1e5), n=st.integers(min_value=1, max_value=20))
def test_market_closed_with_a_live_loop_never_alarms(
    hb: float, run: float | None, uptime: float, n: int,
) -> None:
    state: WatchState = {}
    for i in range(n):
        d = decide([proc(hb=hb, run=run, uptime=uptime, market_open=False)], [], state, POLICY,
                   now=1000.0 + i)
        assert d.actions == []
        state = d.state


@settings(max_examples=200, deadline=None)
@given(cycles=st.integers(min_value=1, max_value=30),
       healthy_for=st.floats(min_value=0, max_value=POLICY.settle_s - 0.01))
def test_a_flapping_process_is_one_incident(cycles: int, healthy_for: float) -> None:
    """Hang, restart, look healthy for less than settle_s, hang again: one incident."""
    state: dict[str, Tracked] = {}
    now = 0.0
    opened = bumps = 0
    for c in range(cycles):
        pid = 10 + c
        now += 1
        d = decide([proc(hb=6.0, pid=pid)], [], state, POLICY, now)
        opened += kinds(d.actions).count("OpenIncident")
        bumps += kinds(d.actions).count("BumpIncident")
        now += 1
        d = decide([proc(pid=pid + 1000, uptime=20.0)], [], d.state, POLICY, now)
        now += healthy_for
        d = decide([proc(pid=pid + 1000, uptime=20.0 + healthy_for)], [], d.state, POLICY, now)
        assert not any(isinstance(a, CloseIncident) for a in d.actions)
        state = dict(d.state)
    assert opened == 1 and bumps == cycles
    assert state["large-dispatcher"].incident is not None
    assert state["large-dispatcher"].incident.restarts == cycles


def test_observe_ignores_a_previous_incarnations_heartbeat_and_reads_the_market() -> None:
    from datetime import UTC, datetime, timedelta

    from ops.core.models import Heartbeat, RunRecord
    from ops.core.watchdog import observe

    now = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)
    start = (now - timedelta(seconds=30)).timestamp()
    old_hb = Heartbeat("large-dispatcher", "large", "dispatcher", 1, now - timedelta(seconds=40),
                       now - timedelta(hours=1), {"phase": "running"})
    run = RunRecord("s", "large-dispatcher", "large", "dispatcher", now, now, now,
                    now - timedelta(seconds=3), "idle-market-closed", 0.0)

    def obs(hb: Heartbeat | None, r: RunRecord | None) -> Observed:
        return observe(name="large-dispatcher", qualified="large:large-dispatcher",
                       account="large", role="dispatcher", state="RUNNING", pid=2, start=start,
                       exitstatus=0, spawnerr="", heartbeat=hb, run=r, expected_interval_s=2.0,
                       paused=False, heartbeats=True, now=now)

    o = obs(old_hb, run)
    assert o.gap.heartbeat_age_s is None  # written by the pid before this one
    assert o.gap.uptime_s == 30.0 and o.gap.last_run_age_s == 3.0
    assert o.gap.market_open is False and not o.booting
    fresh = Heartbeat("large-dispatcher", "large", "dispatcher", 2, now - timedelta(seconds=1),
                      now - timedelta(seconds=29), {"phase": "waiting-lock"})
    o = obs(fresh, None)
    assert o.gap.heartbeat_age_s == 1.0 and o.booting and o.gap.market_open is None


def fleet(stale: set[str], n: int = 4, *, runs_only: bool = False) -> list[Observed]:
    """n processes; the `stale` ones hung (or, with runs_only, completing no runs)."""
    names = [f"p{i}-dispatcher" for i in range(n)]
    return [proc(name=nm, pid=10 + i,
                 hb=0.5 if nm not in stale or runs_only else 9.0,
                 run=500.0 if nm in stale and runs_only else 1.0)
            for i, nm in enumerate(names)]


def test_most_heartbeats_stale_at_once_restarts_nobody_and_raises_one_incident() -> None:
    stale = {"p0-dispatcher", "p1-dispatcher", "p2-dispatcher"}
    d = decide(fleet(stale), [], {}, POLICY, now=1000.0)
    assert kinds(d.actions) == ["OpenIncident"]
    opened = d.actions[0]
    assert isinstance(opened, OpenIncident) and opened.kind == "fleet-stalled"
    assert opened.key == incident_key("fleet-stalled") and opened.process is None
    assert "3 of 4 processes stalled at once" in opened.detail
    d = decide(fleet(stale), [], d.state, POLICY, now=1001.0)
    assert d.actions == []
    d = decide(fleet(set()), [], d.state, POLICY, now=1002.0)
    assert d.actions == []
    d = decide(fleet(set()), [], d.state, POLICY, now=1002.0 + POLICY.settle_s)
    assert kinds(d.actions) == ["CloseIncident"]
    assert "fleet-stalled" not in d.state
    # Alive but not trading, all together (ledger writes failing, broker hung): same.
    d = decide(fleet(stale, runs_only=True), [], {}, POLICY, now=1000.0)
    assert kinds(d.actions) == ["OpenIncident"]


def test_one_stale_among_many_is_still_killed() -> None:
    d = decide(fleet({"p2-dispatcher"}), [], {}, POLICY, now=1000.0)
    assert kinds(d.actions) == ["Kill", "OpenIncident", "BumpIncident"]
    d = decide(fleet({"p1-dispatcher", "p2-dispatcher"}, runs_only=True), [], {}, POLICY,
               now=1000.0)
    assert kinds(d.actions).count("Kill") == 2  # half is not most


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(STATES), ages, ages,
                          st.floats(min_value=0, max_value=100)), min_size=3, max_size=10))
def test_never_more_than_half_the_fleet_is_killed_in_one_pass(
    specs: list[tuple[str, float | None, float | None, float]],
) -> None:
    obs = [proc(state, hb=hb, run=run, uptime=up, name=f"p{i}-dispatcher", pid=i + 1)
           for i, (state, hb, run, up) in enumerate(specs)]
    d = decide(obs, [], {}, POLICY, now=1000.0)
    eligible = [o for o in obs if o.gap.state == "RUNNING" and o.gap.uptime_s is not None
                and o.gap.uptime_s >= POLICY.startup_grace_s]
    killed = [a for a in d.actions if isinstance(a, Kill)]
    if len(eligible) >= 3:
        assert 2 * len(killed) <= len(eligible)


def test_database_outage_is_one_incident_opened_after_the_stale_bound() -> None:
    from ops.core.watchdog import DATABASE, decide_database

    st = Tracked()
    acts, st = decide_database(1000.0, st, POLICY, 1003.0, 12)
    assert acts == []  # a blip shorter than the stale bound says nothing
    acts, st = decide_database(1000.0, st, POLICY, 1006.0, 40)
    assert kinds(acts) == ["OpenIncident"]
    opened = acts[0]
    assert isinstance(opened, OpenIncident) and opened.kind == DATABASE
    assert "unreachable for 6s" in opened.detail and "40 rows pending" in opened.detail
    acts, st = decide_database(1000.0, st, POLICY, 1060.0, 900)
    assert kinds(acts) == ["NoteIncident"]  # the text follows the outage (DATABASE_NOTE_S)
    assert "unreachable for 60s" in acts[0].detail  # type: ignore[union-attr]
    assert "900 rows pending" in acts[0].detail  # type: ignore[union-attr]
    # decide() carries the entry over untouched.
    st2 = decide([proc()], [], {DATABASE: st}, POLICY, 1061.0).state[DATABASE]
    assert st2 == st
    acts, st = decide_database(None, st, POLICY, 1070.0, 900)
    assert acts == []
    acts, st = decide_database(None, st, POLICY, 1075.0, 10)
    assert kinds(acts) == ["CloseIncident"]
    close = acts[0]
    assert isinstance(close, CloseIncident) and close.duration_s == 75.0
    assert st.incident is None


def test_a_role_with_its_own_stale_bound_is_judged_on_it() -> None:
    policy = Policy(heartbeat_stale_s=5.0, startup_grace_s=15.0,
                    gap_bounds_s={"dispatcher": 20.0},
                    heartbeat_stale_by_role_s={"dispatcher": 12.0}, settle_s=20.0)
    # 8 s old: stale by the global bound, fresh by the dispatcher's own.
    assert kinds(decide([proc(hb=8.0)], [], {}, policy, now=1000.0).actions) == []
    d = decide([proc(hb=13.0)], [], {}, policy, now=1000.0)
    assert kinds(d.actions) == ["Kill", "OpenIncident", "BumpIncident"]
    opened = d.actions[1]
    assert isinstance(opened, OpenIncident) and "(bound 12s)" in opened.detail


# --- failing: alive, on schedule, every run failing ----------------------------------------

FAILURE = ("the broker rejected large's API key (401): rotate the secret ops-pipeline/alpaca "
           "(its last 3 dispatcher run(s) failed; last error: BrokerApiError: ...)")
FAILING_POLICY = Policy(heartbeat_stale_s=5.0, startup_grace_s=15.0, settle_s=20.0,
                        failing_restarts=2, failing_window_s=600.0)


def failing_proc(pid: int = 100, failure: str | None = FAILURE) -> Observed:
    return Observed(name="large-dispatcher", qualified="large:large-dispatcher",
                    account="large", role="dispatcher", gap=_gap(failing=failure is not None),
                    pid=pid, exitstatus=0, failure=failure)


def _gap(*, failing: bool) -> GapInput:
    return GapInput(state="RUNNING", uptime_s=100.0, heartbeats=True, heartbeat_age_s=1.0,
                    last_run_age_s=1.0, expected_interval_s=2.0, market_open=True,
                    paused=False, failing=failing)


def test_a_failing_process_opens_one_incident_naming_the_cause_and_is_restarted() -> None:
    d = decide([failing_proc()], [], {}, FAILING_POLICY, now=1000.0)
    assert d.statuses["large-dispatcher"] == "failing"
    assert kinds(d.actions) == ["OpenIncident", "Restart", "BumpIncident"]
    opened = d.actions[0]
    assert isinstance(opened, OpenIncident) and opened.kind == "failing"
    assert "rotate the secret ops-pipeline/alpaca" in opened.detail
    restart = d.actions[1]
    assert isinstance(restart, Restart) and restart.pid == 100
    assert "restart 1 of 2" in restart.reason


def test_failing_restarts_are_bounded_then_the_alert_escalates_no_crash_loop() -> None:
    """Five minutes of a process that fails whatever happens, observed every 5 s: at most
    `failing_restarts` restarts, one escalation, the incident stays open throughout."""
    state: WatchState = {}
    restarts = escalations = opened = 0
    pid = 100
    for i in range(60):  # 300 s
        d = decide([failing_proc(pid=pid)], [], state, FAILING_POLICY, now=1000.0 + 5 * i)
        state = d.state
        for a in d.actions:
            if isinstance(a, Restart):
                restarts += 1
                pid += 1  # supervisord starts a new pid
            elif isinstance(a, NoteIncident) and a.detail.startswith("ESCALATED"):
                escalations += 1
            elif isinstance(a, OpenIncident):
                opened += 1
            assert not isinstance(a, CloseIncident | Kill)
    assert (restarts, escalations, opened) == (2, 1, 1)
    assert state["large-dispatcher"].incident is not None


def test_a_fixed_process_closes_its_failing_incident_after_settling() -> None:
    d = decide([failing_proc()], [], {}, FAILING_POLICY, now=1000.0)
    d = decide([failing_proc(pid=101, failure=None)], [], d.state, FAILING_POLICY, now=1010.0)
    assert d.statuses["large-dispatcher"] == "ok" and d.actions == []
    d = decide([failing_proc(pid=101, failure=None)], [], d.state, FAILING_POLICY, now=1031.0)
    assert kinds(d.actions) == ["CloseIncident"]
    closed = d.actions[0]
    assert isinstance(closed, CloseIncident) and closed.kind == "failing"
    assert closed.restarts == 1


def test_failing_on_top_of_an_open_incident_says_so_once() -> None:
    d = decide([proc(hb=6.0)], [], {}, FAILING_POLICY, now=1000.0)  # hung: killed
    d = decide([failing_proc(pid=101)], [], d.state, FAILING_POLICY, now=1010.0)
    notes = [a for a in d.actions if isinstance(a, NoteIncident)]
    assert len(notes) == 1 and notes[0].detail.startswith("failing: the broker rejected")
    d = decide([failing_proc(pid=101)], [], d.state, FAILING_POLICY, now=1015.0)
    assert not [a for a in d.actions if isinstance(a, NoteIncident)]


def test_an_unexpected_exit_says_how_it_ended_from_supervisords_log() -> None:
    ev = ProcessEvent("large-dispatcher", "RUNNING", "EXITED", expected=False, pid=77,
                      how="terminated by SIGKILL")
    d = decide([proc(pid=78, uptime=1.0)], [ev], {}, POLICY, now=1000.0)
    opened = [a for a in d.actions if isinstance(a, OpenIncident)]
    assert len(opened) == 1 and opened[0].kind == "exited"
    assert "(terminated by SIGKILL, pid 77)" in opened[0].detail
    assert "exit status" not in opened[0].detail  # not the restarted pid's status
    unknown = ProcessEvent("large-dispatcher", "RUNNING", "EXITED", expected=False, pid=77)
    d = decide([proc(pid=78, uptime=1.0)], [unknown], {}, POLICY, now=1000.0)
    assert "how unknown" in [a for a in d.actions if isinstance(a, OpenIncident)][0].detail


def test_the_outage_incident_says_what_it_holds_back_and_keeps_saying_it() -> None:
    from ops.core.watchdog import DATABASE, DATABASE_NOTE_S, decide_database

    held = ["large: dispatch paused: database unreachable for 12s, 3 signal(s) waiting"]
    acts, st = decide_database(900.0, Tracked(), POLICY, 1000.0, 40, held)
    [opened] = acts
    assert isinstance(opened, OpenIncident) and opened.kind == DATABASE
    assert "40 rows pending" in opened.detail and held[0] in opened.detail
    acts, st = decide_database(900.0, st, POLICY, 1001.0, 41, held)
    assert acts == []
    later = ["large: dispatch paused: database unreachable for 45s, 5 signal(s) waiting"]
    acts, st = decide_database(900.0, st, POLICY, 1000.0 + DATABASE_NOTE_S, 60, later)
    [note] = acts
    assert isinstance(note, NoteIncident) and later[0] in note.detail
    assert "Postgres unreachable for 130s" in note.detail


def test_most_of_the_fleet_stalled_restarts_nobody_but_a_stopped_process_is_killed() -> None:
    """Most processes stalled together (a loaded or paused host, a slow database): one
    incident and no restarts. A process stopped by a signal among them is hung for
    certain and is killed anyway (CI: a SIGSTOPped role waited for a minute behind a
    loaded host's mass stall)."""
    from dataclasses import replace

    names = ["large-dispatcher", "large-stream", "tiny-dispatcher", "tiny-stream"]
    stalled = [proc(hb=9.0, name=n, pid=100 + i) for i, n in enumerate(names)]
    d = decide(stalled, [], {}, POLICY, now=1000.0)
    assert "Kill" not in kinds(d.actions) and "OpenIncident" in kinds(d.actions)
    stopped = [replace(stalled[0], stopped=True), *stalled[1:]]
    d = decide(stopped, [], {}, POLICY, now=1000.0)
    kills = [a for a in d.actions if isinstance(a, Kill)]
    assert [k.pid for k in kills] == [100]
