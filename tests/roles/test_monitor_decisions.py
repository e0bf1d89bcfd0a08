"""ops.core.watchdog.decide as the monitor drives it (`Policy.acts` false): processes observed
from their heartbeat rows alone (`observe_heartbeat`), the watchdog's incidents, no kills.
Pure: no I/O, no clock (the process-level proof is tests/roles/test_monitor.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from ops.core.models import Heartbeat, RunRecord
from ops.core.watchdog import (
    MISSING,
    Action,
    BumpIncident,
    CloseIncident,
    NoteIncident,
    Observed,
    OpenIncident,
    Policy,
    Tracked,
    decide,
    incident_key,
    observe_heartbeat,
    shown_state,
)

POLICY = Policy(heartbeat_stale_s=5.0, startup_grace_s=15.0,
                gap_bounds_s={"dispatcher": 20.0}, settle_s=20.0, failing_restarts=2,
                failing_window_s=600.0, acts=False)
T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
NAME = "large-dispatcher"
FAILING: dict[str, int | float | str] = {
    "phase": "running", "dispatch.errors_in_row": 3, "dispatch.recent_runs": 3,
    "dispatch.recent_errors": 3, "dispatch.last_error": "HTTP 401"}


def hb(age_s: float, *, started_ago_s: float = 300.0, pid: int = 7,
       counters: dict[str, int | float | str] | None = None, now: datetime = T0) -> Heartbeat:
    return Heartbeat(NAME, "large", "dispatcher", pid, now - timedelta(seconds=age_s),
                     now - timedelta(seconds=started_ago_s),
                     counters if counters is not None else {"phase": "running"})


def ran(age_s: float, now: datetime = T0) -> RunRecord:
    at = now - timedelta(seconds=age_s)
    return RunRecord("s", NAME, "large", "dispatcher", at, at, at, at, "ok", 0.0)


def seen(heartbeat: Heartbeat | None, *, run_age_s: float | None = 1.0, now: datetime = T0,
         watching_since: float | None = None, failure: str | None = None) -> Observed:
    return observe_heartbeat(
        name=NAME, account="large", role="dispatcher", heartbeat=heartbeat,
        run=None if run_age_s is None else ran(run_age_s, now), expected_interval_s=2.0,
        paused=False, now=now, startup_grace_s=POLICY.startup_grace_s,
        watching_since=watching_since, failure=failure)


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_stale_heartbeat_opens_one_hung_incident_and_kills_nobody() -> None:
    o = seen(hb(8.0))
    assert shown_state(o, POLICY) == "STALE" and o.gap.state == "RUNNING"
    d = decide([o], [], {}, POLICY, now=T0.timestamp())
    assert kinds(d.actions) == ["OpenIncident"]
    opened = d.actions[0]
    assert isinstance(opened, OpenIncident) and opened.kind == "hung"
    assert opened.key == incident_key(NAME)  # the watchdog's key: one incident either way
    assert "heartbeat 8.0s old" in opened.detail and "killed" not in opened.detail
    assert d.statuses[NAME] == "stalled"
    # Still stale on the next passes: nothing more (the watchdog would kill again).
    later = decide([seen(hb(20.0))], [], d.state, POLICY, now=T0.timestamp() + 12)
    assert later.actions == []


def test_a_fresh_heartbeat_without_runs_is_stalled_not_hung() -> None:
    d = decide([seen(hb(0.5), run_age_s=40.0)], [], {}, POLICY, now=T0.timestamp())
    assert [a.kind for a in d.actions if isinstance(a, OpenIncident)] == ["stalled"]


def test_an_orchestrator_restart_is_counted_and_the_incident_closes_after_settle() -> None:
    t = T0.timestamp()
    d = decide([seen(hb(8.0))], [], {}, POLICY, now=t)
    # The orchestrator's health check restarted it: a new incarnation, beating again.
    now = T0 + timedelta(seconds=10)
    back = seen(hb(0.2, started_ago_s=2.0, pid=9, now=now), run_age_s=None, now=now)
    d = decide([back], [], d.state, POLICY, now=now.timestamp())
    assert kinds(d.actions) == ["BumpIncident"]
    bump = d.actions[0]
    assert isinstance(bump, BumpIncident) and "restarted" in bump.detail and "pid 9" in bump.detail
    assert d.statuses[NAME] == "starting"
    now2 = now + timedelta(seconds=5)
    d = decide([seen(hb(0.2, started_ago_s=7.0, pid=9, now=now2), now=now2)], [], d.state,
               POLICY, now=now2.timestamp())
    assert d.actions == [] and d.statuses[NAME] == "ok"  # healthy, settling
    now3 = now2 + timedelta(seconds=21)
    d = decide([seen(hb(0.2, started_ago_s=28.0, pid=9, now=now3), now=now3)], [], d.state,
               POLICY, now=now3.timestamp())
    assert kinds(d.actions) == ["CloseIncident"]
    closed = d.actions[0]
    assert isinstance(closed, CloseIncident) and closed.restarts == 1
    assert closed.kind == "hung" and "healthy (ok)" in closed.detail


def test_no_heartbeat_is_starting_within_the_grace_then_missing() -> None:
    since = T0.timestamp() - 5
    young = seen(None, run_age_s=None, watching_since=since)
    assert shown_state(young, POLICY) == "STARTING"
    d = decide([young], [], {}, POLICY, now=T0.timestamp())
    assert d.actions == [] and d.statuses[NAME] == "starting"
    later = T0 + timedelta(seconds=11)
    gone = seen(None, run_age_s=None, now=later, watching_since=since)
    assert gone.gap.state == MISSING and shown_state(gone, POLICY) == MISSING
    d = decide([gone], [], d.state, POLICY, now=later.timestamp())
    assert d.statuses[NAME] == "down"
    assert [(a.kind, a.key) for a in d.actions if isinstance(a, OpenIncident)] == [
        ("missing", incident_key(NAME))]
    # A one-shot reader (no watching_since) says MISSING at once.
    assert seen(None, run_age_s=None).gap.state == MISSING


def test_failing_escalates_once_the_orchestrator_restarted_it_enough() -> None:
    cause = "the broker rejected large's API key (401)"
    t = T0
    d = decide([seen(hb(0.3, counters=FAILING), failure=cause)], [], {}, POLICY,
               now=t.timestamp())
    assert kinds(d.actions) == ["OpenIncident"]
    assert isinstance(d.actions[0], OpenIncident) and d.actions[0].kind == "failing"
    notes: list[str] = []
    for i in range(1, 3):  # two restarts by the orchestrator, still failing
        t = t + timedelta(seconds=30)
        o = seen(hb(0.3, started_ago_s=5.0, pid=10 + i, counters=FAILING, now=t),
                 now=t, failure=cause)
        d = decide([o], [], d.state, POLICY, now=t.timestamp())
        assert "Restart" not in kinds(d.actions) and "Kill" not in kinds(d.actions)
        notes += [a.detail for a in d.actions if isinstance(a, NoteIncident)]
    assert len(notes) == 1 and notes[0].startswith("ESCALATED: large-dispatcher still failing "
                                                   "after 2 restart(s)")
    t = t + timedelta(seconds=30)  # escalated once, not every pass
    d = decide([seen(hb(0.3, started_ago_s=35.0, pid=12, counters=FAILING, now=t), now=t,
                     failure=cause)], [], d.state, POLICY, now=t.timestamp())
    assert d.actions == []


def test_most_of_the_fleet_stale_is_one_fleet_incident() -> None:
    fleet = [replace(seen(hb(9.0)), name=f"p{i}-dispatcher", qualified=f"p{i}-dispatcher")
             for i in range(3)]
    fleet.append(replace(seen(hb(0.5)), name="p3-dispatcher", qualified="p3-dispatcher"))
    d = decide(fleet, [], {}, POLICY, now=T0.timestamp())
    opened = [a for a in d.actions if isinstance(a, OpenIncident)]
    assert [a.kind for a in opened] == ["fleet-stalled"]
    assert "no restarts" not in opened[0].detail  # the monitor makes none anyway


def test_a_process_dropped_from_the_config_closes_its_incident() -> None:
    d = decide([seen(hb(8.0))], [], {}, POLICY, now=T0.timestamp())
    d = decide([], [], d.state, POLICY, now=T0.timestamp() + 1)
    assert [a.detail for a in d.actions if isinstance(a, CloseIncident)] == [
        "process no longer expected (not in the config)"]


ages = st.one_of(st.none(), st.floats(0, 1e5))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.one_of(st.none(), st.floats(0, 100)), ages,
                                st.integers(0, 3), st.booleans()), min_size=1, max_size=12))
def test_the_monitor_never_kills_restarts_or_starts(
    steps: list[tuple[float | None, float | None, int, bool]],
) -> None:
    """Whatever it observes, acts=False decides incidents only, and at most one open
    incident per process at a time."""
    state: dict[str, Tracked] = {}
    t = T0
    for hb_age, run_age, incarnation, failing in steps:
        t = t + timedelta(seconds=3)
        heartbeat = None if hb_age is None else hb(
            hb_age, started_ago_s=hb_age + 1 + incarnation, now=t,
            counters=FAILING if failing else None)
        o = seen(heartbeat, run_age_s=run_age, now=t, watching_since=T0.timestamp(),
                 failure="x" if failing else None)
        d = decide([o], [], state, POLICY, now=t.timestamp())
        assert set(kinds(d.actions)) <= {"OpenIncident", "BumpIncident", "NoteIncident",
                                         "CloseIncident"}
        was_open = state.get(NAME, Tracked()).incident is not None
        opens = sum(isinstance(a, OpenIncident) for a in d.actions)
        assert opens <= (0 if was_open else 1)
        state = d.state
