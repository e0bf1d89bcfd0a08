"""gap_status: examples for each outcome, and properties over every input (hypothesis)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from ops.core.gaps import (
    SEVERITY,
    GapBounds,
    GapInput,
    gap_status,
    late_after,
    stalled_after,
    worst,
)

BOUNDS = GapBounds(heartbeat_stale_s=5.0, startup_grace_s=15.0, gap_bound_s=60.0)
HEALTHY = GapInput(
    state="RUNNING", uptime_s=600.0, heartbeats=True, heartbeat_age_s=0.5,
    last_run_age_s=1.0, expected_interval_s=2.0, market_open=True, paused=False,
)
STATES = ["RUNNING", "STARTING", "BACKOFF", "STOPPED", "STOPPING", "EXITED", "FATAL", "UNKNOWN"]
ages = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=0.1, max_value=3600, allow_nan=False)

inputs = st.builds(
    GapInput,
    state=st.sampled_from(STATES),
    uptime_s=ages,
    heartbeats=st.booleans(),
    heartbeat_age_s=ages,
    last_run_age_s=ages,
    expected_interval_s=st.none() | positive,
    market_open=st.none() | st.booleans(),
    paused=st.booleans(),
)
bounds = st.builds(
    GapBounds,
    heartbeat_stale_s=positive,
    startup_grace_s=positive,
    gap_bound_s=st.none() | positive,
)


def test_examples() -> None:
    assert gap_status(HEALTHY, BOUNDS) == "ok"
    assert gap_status(replace(HEALTHY, state="FATAL"), BOUNDS) == "down"
    assert gap_status(replace(HEALTHY, state="STARTING"), BOUNDS) == "starting"
    assert gap_status(replace(HEALTHY, heartbeat_age_s=30.0), BOUNDS) == "stalled"
    assert gap_status(replace(HEALTHY, heartbeat_age_s=None, uptime_s=3.0), BOUNDS) == "starting"
    assert gap_status(replace(HEALTHY, paused=True), BOUNDS) == "paused"
    assert gap_status(replace(HEALTHY, market_open=False), BOUNDS) == "idle-market-closed"
    assert gap_status(replace(HEALTHY, last_run_age_s=13.0), BOUNDS) == "late"
    assert gap_status(replace(HEALTHY, last_run_age_s=61.0), BOUNDS) == "stalled"
    assert gap_status(replace(HEALTHY, last_run_age_s=None), BOUNDS) == "stalled"
    # Just restarted: its last run predates the restart, so it is starting, not stalled.
    assert gap_status(replace(HEALTHY, uptime_s=4.0, last_run_age_s=100.0), BOUNDS) == "starting"
    # Inside the first grace + late window nothing is judged worse than starting, whether
    # the last run was before or after the restart (so an older run never looks better).
    tight = replace(BOUNDS, gap_bound_s=1.0)
    assert gap_status(replace(HEALTHY, uptime_s=26.0, last_run_age_s=20.0), tight) == "starting"
    assert gap_status(replace(HEALTHY, uptime_s=26.0, last_run_age_s=30.0), tight) == "starting"
    assert gap_status(replace(HEALTHY, uptime_s=28.0, last_run_age_s=20.0), tight) == "stalled"
    # No periodic job (or no heartbeats at all): RUNNING with a fresh beat is enough.
    assert gap_status(replace(HEALTHY, expected_interval_s=None, last_run_age_s=None),
                      BOUNDS) == "ok"
    assert gap_status(replace(HEALTHY, heartbeats=False, heartbeat_age_s=None), BOUNDS) == "ok"


def test_thresholds() -> None:
    assert late_after(2.0) == 12.0
    assert late_after(60.0) == 120.0
    assert stalled_after(2.0, 60.0) == 60.0
    # A bound below "late" is honoured (the operator wants a restart that soon), but never
    # under one interval: a process on schedule is never stalled.
    assert stalled_after(5.0, 8.0) == 8.0
    assert stalled_after(60.0, 30.0) == 60.0
    long_up = replace(HEALTHY, expected_interval_s=5.0, uptime_s=1000.0)
    assert gap_status(replace(long_up, last_run_age_s=7.9), replace(BOUNDS, gap_bound_s=8.0)) \
        == "ok"
    assert gap_status(replace(long_up, last_run_age_s=8.1), replace(BOUNDS, gap_bound_s=8.0)) \
        == "stalled"
    assert stalled_after(2.0, None) == 36.0
    assert worst([]) == 0
    assert worst(["ok", "late", "paused"]) == 1
    assert worst(["idle-market-closed", "down"]) == 2


@given(inputs, bounds)
def test_always_a_known_status(inp: GapInput, b: GapBounds) -> None:
    assert gap_status(inp, b) in SEVERITY


@given(inputs, bounds)
def test_not_running_is_down(inp: GapInput, b: GapBounds) -> None:
    status = gap_status(inp, b)
    if inp.state not in ("RUNNING", "STARTING"):
        assert status == "down"
    else:
        assert status != "down"


@given(inputs, bounds)
def test_stale_heartbeat_outside_grace_is_stalled(inp: GapInput, b: GapBounds) -> None:
    stale = inp.heartbeat_age_s is None or inp.heartbeat_age_s > b.heartbeat_stale_s
    grace = inp.uptime_s is not None and inp.uptime_s < b.startup_grace_s
    if inp.state == "RUNNING" and inp.heartbeats and stale and not grace:
        assert gap_status(inp, b) == "stalled"


@given(inputs, bounds)
def test_fresh_heartbeat_flags_win_over_gaps(inp: GapInput, b: GapBounds) -> None:
    fresh = inp.heartbeat_age_s is not None and inp.heartbeat_age_s <= b.heartbeat_stale_s
    if inp.state != "RUNNING" or not inp.heartbeats or not fresh:
        return
    status = gap_status(inp, b)
    if inp.paused:
        assert status == "paused"
    elif inp.expected_interval_s is not None and inp.market_open is False:
        assert status == "idle-market-closed"
    else:
        assert status in ("ok", "late", "stalled", "starting")


@given(inputs, bounds, st.floats(min_value=0, max_value=1e5, allow_nan=False))
def test_older_runs_never_look_better(inp: GapInput, b: GapBounds, extra: float) -> None:
    """With everything else fixed, a larger gap never improves the verdict."""
    if inp.last_run_age_s is None:
        return
    rank = {"ok": 0, "idle-market-closed": 0, "paused": 0, "starting": 1, "late": 1,
            "stalled": 2, "down": 2}
    older = replace(inp, last_run_age_s=inp.last_run_age_s + extra)
    assert rank[gap_status(older, b)] >= rank[gap_status(inp, b)]


@given(
    st.floats(min_value=0.1, max_value=3600, allow_nan=False),
    st.floats(min_value=0, max_value=1, allow_nan=False),
    bounds,
)
def test_on_schedule_is_ok(interval: float, frac: float, b: GapBounds) -> None:
    """A run completed within one interval, fresh beat, long-running process: ok."""
    inp = GapInput(
        state="RUNNING", uptime_s=b.startup_grace_s + 10 * late_after(interval),
        heartbeats=True, heartbeat_age_s=b.heartbeat_stale_s * frac,
        last_run_age_s=interval * frac, expected_interval_s=interval, market_open=True,
        paused=False,
    )
    assert gap_status(inp, b) == "ok"


@given(st.floats(min_value=0.1, max_value=3600, allow_nan=False), bounds)
def test_beyond_the_stall_bound_is_stalled(interval: float, b: GapBounds) -> None:
    age = stalled_after(interval, b.gap_bound_s) + 1
    inp = GapInput(
        state="RUNNING", uptime_s=age + b.startup_grace_s + 10 * late_after(interval),
        heartbeats=True, heartbeat_age_s=0.0, last_run_age_s=age,
        expected_interval_s=interval, market_open=None, paused=False,
    )
    assert gap_status(inp, b) == "stalled"
