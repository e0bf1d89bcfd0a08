"""The ticker: fixed-rate slots on a wall-clock grid, overruns, failures, gates, run now.

Scheduling logic (slot computation, skipping missed slots, catch-up, gap accounting) runs
on a virtual clock (tests/ticker/vclock.py): no sleeping, no dependence on the host's
load, so slot times, lateness and skip counts are asserted exactly. The loop starts at
virtual time 0 = wall time `WALL0` (a whole hour), so slot k of an interval `i` is at
`T0 + k*i` and is due at loop time `k*i`. One test at the end runs on the real loop,
where real timing is the point, with generous bounds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from ops.core.models import RunRecord
from ops.runtime.ticker import HeartbeatTask, Slot, SystemClock, Ticker
from tests.support import eventually
from tests.ticker.ledger import MemoryLedger, MemorySink, slot_us
from tests.ticker.vclock import WALL0, VirtualWall, on_virtual_clock

Job = Callable[[Slot], Awaitable[None]]

T0 = datetime.fromtimestamp(WALL0, UTC)
#: Float noise allowed on times derived from the virtual clock (they are exact otherwise).
EPS = 1e-6


def make(job: Job, interval_s: float, ledger: MemoryLedger, **kw: object) -> Ticker:
    """A ticker on the virtual wall clock (pass `clock=` to override)."""
    kw.setdefault("clock", VirtualWall())
    return Ticker(
        "t", interval_s, job, process="test-proc", account="acct", role="unit",
        ledger=ledger, **kw,  # type: ignore[arg-type]
    )


def at_ms(*ms: int) -> list[datetime]:
    """Slot times `ms` milliseconds after T0."""
    return [T0 + timedelta(milliseconds=m) for m in ms]


async def idle(seconds: float) -> None:
    """Let `seconds` of (virtual) schedule happen."""
    await asyncio.sleep(seconds)


@asynccontextmanager
async def running(ticker: Ticker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ticker.run())
    try:
        yield task
    finally:
        ticker.request_stop()
        await asyncio.wait_for(task, 10)


def check_accounting(recs: list[RunRecord], interval_us: int) -> None:
    """Every slot between the first and last run was either run or counted as skipped."""
    idx = [slot_us(r.slot_time) // interval_us for r in recs]
    assert all(slot_us(r.slot_time) % interval_us == 0 for r in recs), "slot not on the grid"
    assert idx == sorted(set(idx)), "slot indices must strictly increase"
    assert sum(1 + r.skipped_before for r in recs[1:]) == idx[-1] - idx[0]


# -- the grid --------------------------------------------------------------------------


@on_virtual_clock
async def test_fixed_rate_slots_do_not_drift_with_the_jobs_duration() -> None:
    ledger = MemoryLedger()
    loop = asyncio.get_running_loop()
    started: dict[datetime, float] = {}

    async def job(slot: Slot) -> None:
        started[slot.slot_time] = loop.time()
        await asyncio.sleep(0.003)  # a sleep(interval) loop would drift 1.2 s in 400 runs

    ticker = make(job, 0.01, ledger)
    async with running(ticker):
        await eventually(lambda: len(ledger.finals()) >= 400, "400 runs")
    recs = ledger.finals()[:400]
    assert [r.slot_time for r in recs] == at_ms(*range(0, 4000, 10))
    assert all(r.outcome == "ok" and r.skipped_before == 0 for r in recs)
    for k, r in enumerate(recs):
        # Slot k starts at its deadline k * interval: on time, whatever the jobs took.
        assert abs(started[r.slot_time] - k * 0.01) < EPS, (k, started[r.slot_time])
        assert r.lateness_s < EPS
        assert r.started_at is not None and r.finished_at is not None
        assert abs((r.started_at - r.slot_time).total_seconds()) <= EPS
        assert abs((r.finished_at - r.started_at).total_seconds() - 0.003) <= EPS
        assert r.scheduled_at == r.slot_time
        assert r.slot_id == f"acct:unit:{r.slot_time:%Y%m%dT%H%M%S.%fZ}"
    assert ticker.stats().runs_ok >= 400 and ticker.stats().runs_skipped == 0


@on_virtual_clock
async def test_slots_follow_the_wall_clock_not_the_monotonic_one() -> None:
    loop = asyncio.get_running_loop()
    ledger = MemoryLedger()
    started: list[float] = []

    async def job(slot: Slot) -> None:
        started.append(loop.time())

    # The wall clock reads T0 + 0.3 s at loop time 0: the 0.2 s grid's first slot is
    # T0 + 0.4 s, due 0.1 s later on the loop clock.
    ticker = make(job, 0.2, ledger, clock=VirtualWall(shift_s=0.3))
    async with running(ticker):
        await idle(0.55)
    assert [r.slot_time for r in ledger.finals()] == at_ms(400, 600, 800)
    assert started == pytest.approx([0.1, 0.3, 0.5], abs=EPS)
    for r in ledger.finals():
        # started_at is on the ticker's (shifted) wall clock: the slot time itself.
        assert r.started_at is not None
        assert abs((r.started_at - r.slot_time).total_seconds()) <= EPS


# -- overruns --------------------------------------------------------------------------


@on_virtual_clock
async def test_overrun_runs_the_latest_due_slot_skips_the_rest_and_never_overlaps() -> None:
    ledger = MemoryLedger()
    active = 0
    max_active = 0

    async def job(slot: Slot) -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        await asyncio.sleep(0.1234)  # 2.468 intervals: never ends on a slot boundary
        active -= 1

    ticker = make(job, 0.05, ledger)
    async with running(ticker):
        await idle(1.0)  # eight runs end by 0.9872 s
    recs = ledger.finals()[:8]
    # Run i starts when run i-1 ends, at i * 0.1234 s, with the latest slot due by then.
    starts_us = [i * 123_400 for i in range(8)]
    slots = [s // 50_000 for s in starts_us]
    assert slots == [0, 2, 4, 7, 9, 12, 14, 17]
    assert [slot_us(r.slot_time) - slot_us(T0) for r in recs] == [s * 50_000 for s in slots]
    assert [r.skipped_before for r in recs] == [0, 1, 1, 2, 1, 2, 1, 2]
    assert [r.lateness_s for r in recs] == pytest.approx(
        [(s - k * 50_000) / 1e6 for s, k in zip(starts_us, slots, strict=True)], abs=EPS)
    assert max_active == 1
    assert all(r.outcome == "ok" for r in recs)
    check_accounting(recs, 50_000)
    assert ticker.stats().runs_skipped == sum(r.skipped_before for r in ledger.finals())


@on_virtual_clock
async def test_timeout_recorded_and_the_next_slot_runs_on_time() -> None:
    ledger = MemoryLedger()
    calls = 0
    never = asyncio.Event()

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await never.wait()

    ticker = make(job, 0.05, ledger, job_timeout_s=0.03)
    async with running(ticker):
        await idle(0.06)
    first, second = ledger.finals()
    assert first.outcome == "timeout"
    assert first.error == "job exceeded job_timeout_s=0.03"
    assert first.started_at is not None and first.finished_at is not None
    assert abs((first.finished_at - first.started_at).total_seconds() - 0.03) <= EPS
    assert second.outcome == "ok"
    assert second.slot_time == at_ms(50)[0] and second.skipped_before == 0
    assert second.lateness_s < EPS


# -- outcomes --------------------------------------------------------------------------


@on_virtual_clock
async def test_job_error_recorded_and_next_slot_runs(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MemoryLedger()
    calls = 0

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom " + "x" * 2000)

    ticker = make(job, 0.02, ledger)
    with caplog.at_level(logging.ERROR, logger="ops.runtime.ticker"):
        async with running(ticker):
            await idle(0.03)
    first, second = ledger.finals()
    assert first.outcome == "error"
    assert first.error is not None and first.error.startswith("ValueError: boom x")
    assert len(first.error) <= 500
    assert first.finished_at is not None and first.started_at is not None
    assert second.outcome == "ok" and second.slot_time == at_ms(20)[0]
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    assert ticker.stats().runs_error == 1


@on_virtual_clock
async def test_outcome_health_counters_for_the_failing_verdict() -> None:
    """errors_in_row counts failed runs in a row and a good run resets it; the recent
    window keeps how many of the last runs failed; the heartbeat carries all of it."""
    ledger = MemoryLedger()
    calls = 0
    seen: list[tuple[int, int, int]] = []
    ticker: Ticker

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1
        s = ticker.stats()
        seen.append((s.errors_in_row, len(s.recent), sum(s.recent)))
        if calls in (1, 2, 3, 5):
            raise RuntimeError(f"failure {calls}")

    ticker = make(job, 0.02, ledger)
    async with running(ticker):
        await idle(0.11)  # slots at 0, 20, ..., 100 ms: six runs
    # What each run saw of the runs before it.
    assert seen == [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3), (0, 4, 3), (1, 5, 4)]
    c = ticker.counters()
    assert c["t.errors_in_row"] == 0 and c["t.recent_errors"] == 4
    assert c["t.last_error"] == "RuntimeError: failure 5"


@on_virtual_clock
async def test_running_record_then_final() -> None:
    ledger = MemoryLedger()
    ticker = make(lambda s: asyncio.sleep(0), 0.02, ledger)
    async with running(ticker):
        await eventually(lambda: ledger.finals(), "a final record")
    slot_id = ledger.finals()[0].slot_id
    outcomes = [w.outcome for w in ledger.writes if w.slot_id == slot_id]
    assert outcomes == ["running", "ok"]
    running_rec = next(w for w in ledger.writes if w.slot_id == slot_id)
    assert running_rec.finished_at is None and running_rec.started_at is not None


@on_virtual_clock
async def test_job_raising_its_own_timeout_error_is_an_error() -> None:
    ledger = MemoryLedger()

    async def job(slot: Slot) -> None:
        raise TimeoutError("upstream timed out")

    ticker = make(job, 0.02, ledger, job_timeout_s=5)
    async with running(ticker):
        await eventually(lambda: ledger.finals(), "a final record")
    assert ledger.finals()[0].outcome == "error"
    assert ledger.finals()[0].error == "TimeoutError: upstream timed out"


@on_virtual_clock
async def test_ledger_failures_never_stop_the_schedule(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MemoryLedger()
    ledger.fail_next = 6  # "running" and final of the first three runs
    calls = 0

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1

    ticker = make(job, 0.02, ledger)
    async with running(ticker):
        await idle(0.09)  # slots at 0, 20, ..., 80 ms
    assert calls == 5  # three runs whose records were lost, then two recorded ones
    assert [r.slot_time for r in ledger.finals()] == at_ms(60, 80)
    assert "run ledger write failed" in caplog.text


# -- gates -----------------------------------------------------------------------------


@on_virtual_clock
async def test_market_closed_records_idle_and_never_runs_job() -> None:
    ledger = MemoryLedger()
    calls = 0

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1

    async def closed() -> bool:
        return False

    ticker = make(job, 0.02, ledger, market_gate=closed)
    async with running(ticker):
        await idle(0.05)
    recs = ledger.finals()
    assert [r.slot_time for r in recs] == at_ms(0, 20, 40)
    assert calls == 0
    assert {r.outcome for r in recs} == {"idle-market-closed"}
    assert all(r.started_at is None and r.finished_at is not None for r in recs)
    assert not any(w.outcome == "running" for w in ledger.writes)
    assert ticker.stats().runs_idle == 3


@on_virtual_clock
async def test_paused_records_paused() -> None:
    ledger = MemoryLedger()
    calls = 0

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1

    async def paused() -> bool:
        return True

    async def gate() -> bool:
        raise AssertionError("market gate must not be consulted while paused")

    ticker = make(job, 0.02, ledger, paused=paused, market_gate=gate)
    async with running(ticker):
        await idle(0.03)
    assert calls == 0
    assert [r.outcome for r in ledger.finals()] == ["paused", "paused"]


@on_virtual_clock
async def test_failing_gate_is_an_error_record() -> None:
    ledger = MemoryLedger()

    async def gate() -> bool:
        raise ConnectionError("broker down")

    ticker = make(lambda s: asyncio.sleep(0), 0.02, ledger, market_gate=gate)
    async with running(ticker):
        await eventually(lambda: ledger.finals(), "a final record")
    rec = ledger.finals()[0]
    assert rec.outcome == "error" and rec.error == "gate: ConnectionError: broker down"


# -- run now, reload, stop -------------------------------------------------------------


@on_virtual_clock
async def test_trigger_runs_now_with_manual_slot_id_off_the_grid() -> None:
    ledger = MemoryLedger()
    slots: list[Slot] = []

    async def job(slot: Slot) -> None:
        slots.append(slot)

    await idle(1)  # an hourly grid's next slot is 3599 s away
    ticker = make(job, 3600, ledger)
    async with running(ticker):
        assert ticker.trigger() is True
        await eventually(lambda: ledger.finals(), "the manual run")
        await idle(3598)
        assert len(ledger.finals()) == 1, "no scheduled slot before the hour"
        await idle(1.5)
        assert len(ledger.finals()) == 2, "the hour's slot, as if nothing had happened"
    manual, hourly = ledger.finals()
    assert manual.slot_id.endswith(":manual") and manual.slot_id.startswith("acct:unit:")
    assert manual.outcome == "ok" and manual.slot_time == T0 + timedelta(seconds=1)
    assert slots[0].manual is True
    assert hourly.slot_time == T0 + timedelta(hours=1) and hourly.skipped_before == 0
    assert ticker.stats().runs_manual == 1


@on_virtual_clock
async def test_trigger_refused_while_running_and_grid_undisturbed() -> None:
    ledger = MemoryLedger()
    gate = asyncio.Event()
    entered = asyncio.Event()

    async def job(slot: Slot) -> None:
        if slot.manual:
            return
        entered.set()
        await gate.wait()

    ticker = make(job, 0.05, ledger)
    async with running(ticker):
        await asyncio.wait_for(entered.wait(), 10)
        assert ticker.trigger() is False  # in flight: no second run at once
        await idle(0.12)  # slot 0 overruns past slot 2's deadline
        gate.set()
        await idle(0.01)  # slot 0 ends, slot 2 runs late; slot 3 is due at 0.15
        assert ticker.trigger() is True
        await idle(0.13)  # the manual run now, then slots 3, 4, 5
    manual = [r for r in ledger.finals() if r.slot_id.endswith(":manual")]
    scheduled = [r for r in ledger.finals() if not r.slot_id.endswith(":manual")]
    assert [r.slot_time for r in manual] == at_ms(130)
    assert [r.slot_time for r in scheduled] == at_ms(0, 100, 150, 200, 250)
    assert [r.skipped_before for r in scheduled] == [0, 1, 0, 0, 0]
    assert all(r.lateness_s < EPS for r in scheduled[2:]), "the grid goes on as before"
    check_accounting(scheduled, 50_000)


@on_virtual_clock
async def test_set_interval_realigns_from_next_slot_without_counting_a_gap() -> None:
    ledger = MemoryLedger()
    ticker = make(lambda s: asyncio.sleep(0), 0.05, ledger)
    async with running(ticker):
        await idle(0.149)  # slots 0, 50, 100 ms
        ticker.set_interval(0.02)
        await idle(0.092)  # the new grid from the next point after now: 160, 180, ...
    recs = ledger.finals()
    assert [r.slot_time for r in recs] == at_ms(0, 50, 100, 160, 180, 200, 220, 240)
    # The old grid's unused stretch (120 and 140 on the new grid) is not "skipped".
    assert all(r.skipped_before == 0 for r in recs) and ticker.stats().runs_skipped == 0
    assert ticker.interval_s == 0.02
    with pytest.raises(ValueError, match="interval_s must be at least 0.001"):
        ticker.set_interval(0)


@on_virtual_clock
async def test_cancel_mid_job_records_and_propagates() -> None:
    ledger = MemoryLedger()
    entered = asyncio.Event()

    async def job(slot: Slot) -> None:
        entered.set()
        await asyncio.Event().wait()

    ticker = make(job, 0.02, ledger)
    task = asyncio.create_task(ticker.run())
    await asyncio.wait_for(entered.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (rec,) = ledger.finals()
    assert rec.outcome == "error" and rec.error == "CancelledError: job cancelled (shutdown)"


@on_virtual_clock
async def test_heartbeat_continues_while_job_hangs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ops.runtime.ticker")
    ledger = MemoryLedger()
    sink = MemorySink()
    sink.fail_next = 3  # sink failures are tolerated too
    entered = asyncio.Event()

    async def job(slot: Slot) -> None:
        entered.set()
        await asyncio.Event().wait()

    ticker = make(job, 0.02, ledger)
    hb = HeartbeatTask("test-proc", "acct", "unit", sink, 0.02, ticker.counters)
    t_task = asyncio.create_task(ticker.run())
    hb_task = asyncio.create_task(hb.run())
    await asyncio.wait_for(entered.wait(), 10)
    await idle(0.15)  # beats at 0, 20, ..., 140 ms: three fail, five are written
    hb.request_stop()
    await asyncio.wait_for(hb_task, 10)
    t_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t_task
    assert hb.failures == 3 and hb.beats == 5
    assert all(b.counters["t.in_flight"] == 1 for b in sink.beats)
    # A run of failures logs its traceback once, then one line each, then the recovery.
    failed = [r for r in caplog.records if "sink write failed" in r.getMessage()]
    assert [(r.levelno, bool(r.exc_info)) for r in failed] == [
        (logging.ERROR, True), (logging.WARNING, False), (logging.WARNING, False)]
    assert "ConnectionError: sink unreachable" in failed[1].getMessage()
    assert any("sink writes work again" in r.getMessage() for r in caplog.records)
    beat = sink.beats[-1]
    assert beat.process == "test-proc" and beat.role == "unit" and beat.account == "acct"
    assert beat.counters["t.runs_ok"] == 0
    assert beat.ts.tzinfo is UTC


def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="finite"):
        make(lambda s: asyncio.sleep(0), float("nan"), MemoryLedger())
    with pytest.raises(ValueError, match="job_timeout_s must be > 0"):
        make(lambda s: asyncio.sleep(0), 1, MemoryLedger(), job_timeout_s=0)


# -- the real loop ---------------------------------------------------------------------


async def test_on_the_real_loop_and_system_clock_slots_keep_to_the_grid() -> None:
    """Real timing is the point: the real loop and `SystemClock` keep every slot on the
    grid and do not drift (bounds generous for a loaded host; exact figures are the
    virtual-clock tests' business)."""
    ledger = MemoryLedger()
    interval = 0.02
    loop = asyncio.get_running_loop()
    observed: dict[datetime, float] = {}

    async def job(slot: Slot) -> None:
        observed[slot.slot_time] = loop.time()

    ticker = make(job, interval, ledger, clock=SystemClock())
    async with running(ticker):
        await eventually(lambda: len(ledger.finals()) >= 100, "100 runs", timeout_s=60)
    recs = ledger.finals()[:100]
    assert all(r.outcome == "ok" for r in recs)
    check_accounting(recs, 20_000)
    # Slot k's start on the loop clock minus k * interval: t0 plus noise on a fixed-rate
    # grid; it would grow with k if intervals were added up (a sleep(interval) loop).
    n0 = slot_us(recs[0].slot_time) // 20_000
    base = [observed[r.slot_time] - (slot_us(r.slot_time) // 20_000 - n0) * interval
            for r in recs]
    first, last = sum(base[:25]) / 25, sum(base[-25:]) / 25
    assert abs(last - first) < 0.1, f"drift {last - first:.4f}s over 100 ticks"
