"""The ticker on the real event loop clock: drift, alignment, overruns, failures, gates.

Timing assertions are about drift and alignment (exact slot arithmetic), never about how
fast this (shared, loaded) machine is: lateness bounds are generous.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest

from ops.ticker import HeartbeatTask, Slot, Ticker, TickerClock
from tests.ticker.ledger import MemoryLedger, MemorySink, slot_us, wait_until

Job = Callable[[Slot], Awaitable[None]]


def make(job: Job, interval_s: float, ledger: MemoryLedger, **kw: object) -> Ticker:
    return Ticker(
        "t", interval_s, job, process="test-proc", account="acct", role="unit",
        ledger=ledger, **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def running(ticker: Ticker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(ticker.run())
    try:
        yield task
    finally:
        ticker.request_stop()
        await asyncio.wait_for(task, 10)


def check_accounting(recs: list[object], interval_us: int) -> None:
    """Every slot between the first and last run was either run or counted as skipped."""
    from ops.models import RunRecord

    rs = [r for r in recs if isinstance(r, RunRecord)]
    idx = [slot_us(r.slot_time) // interval_us for r in rs]
    assert all(slot_us(r.slot_time) % interval_us == 0 for r in rs), "slot not on the grid"
    assert idx == sorted(set(idx)), "slot indices must strictly increase"
    assert sum(1 + r.skipped_before for r in rs[1:]) == idx[-1] - idx[0]


async def test_no_drift_over_400_ticks() -> None:
    ledger = MemoryLedger()
    interval = 0.01
    loop = asyncio.get_running_loop()
    observed: dict[datetime, float] = {}

    async def job(slot: Slot) -> None:
        observed[slot.slot_time] = loop.time()

    ticker = make(job, interval, ledger)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 400, within_s=60, what="400 runs")
    recs = ledger.finals()[:400]
    assert all(r.outcome == "ok" for r in recs)
    check_accounting(list(recs), 10_000)
    # Slot time, scheduled time and slot id agree exactly.
    for r in recs:
        assert r.scheduled_at == r.slot_time
        assert r.slot_id == f"acct:unit:{r.slot_time:%Y%m%dT%H%M%S.%fZ}"
    # Independent of the ticker's own bookkeeping: slot k's start, measured by the job on
    # the loop clock, minus k*interval. For a fixed-rate grid this is t0 + noise; for a
    # sleep(interval) loop it grows with k.
    n0 = slot_us(recs[0].slot_time) // 10_000
    base = [observed[r.slot_time] - (slot_us(r.slot_time) // 10_000 - n0) * interval
            for r in recs]
    first, last = sum(base[:100]) / 100, sum(base[-100:]) / 100
    assert abs(last - first) < interval, f"drift {last - first:.4f}s over 400 ticks"
    # Running the most recent due slot bounds lateness by the interval (plus the time
    # between planning and starting, generous here).
    assert all(0 <= r.lateness_s < interval + 0.05 for r in recs)
    assert ticker.stats().runs_ok >= 400


async def test_overrun_skips_and_never_overlaps() -> None:
    ledger = MemoryLedger()
    active = 0
    max_active = 0

    async def job(slot: Slot) -> None:
        nonlocal active, max_active
        active += 1
        max_active = max(max_active, active)
        await asyncio.sleep(0.125)  # 2.5 intervals
        active -= 1

    ticker = make(job, 0.05, ledger)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 6, what="6 runs")
    recs = ledger.finals()
    assert max_active == 1
    assert all(r.outcome == "ok" for r in recs)
    assert all(r.skipped_before >= 1 for r in recs[1:])
    check_accounting(list(recs), 50_000)
    assert ticker.stats().runs_skipped == sum(r.skipped_before for r in recs)


async def test_job_error_recorded_and_next_slot_runs(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MemoryLedger()
    calls = 0

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("boom " + "x" * 2000)

    ticker = make(job, 0.02, ledger)
    with caplog.at_level(logging.ERROR, logger="ops.ticker"):
        async with running(ticker):
            await wait_until(lambda: len(ledger.finals()) >= 2)
    first, second = ledger.finals()[:2]
    assert first.outcome == "error"
    assert first.error is not None and first.error.startswith("ValueError: boom x")
    assert len(first.error) <= 500
    assert first.finished_at is not None and first.started_at is not None
    assert second.outcome == "ok"
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)
    assert ticker.stats().runs_error == 1


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
        await wait_until(lambda: len(ledger.finals()) >= 6)
    # What each run saw of the runs before it.
    assert seen[:6] == [(0, 0, 0), (1, 1, 1), (2, 2, 2), (3, 3, 3), (0, 4, 3), (1, 5, 4)]
    c = ticker.counters()
    assert c["t.errors_in_row"] == 0 and c["t.recent_errors"] == 4
    assert c["t.last_error"] == "RuntimeError: failure 5"


async def test_running_record_then_final() -> None:
    ledger = MemoryLedger()
    ticker = make(lambda s: asyncio.sleep(0), 0.02, ledger)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 1)
    slot_id = ledger.finals()[0].slot_id
    outcomes = [w.outcome for w in ledger.writes if w.slot_id == slot_id]
    assert outcomes == ["running", "ok"]
    running_rec = next(w for w in ledger.writes if w.slot_id == slot_id)
    assert running_rec.finished_at is None and running_rec.started_at is not None


async def test_timeout_recorded_and_schedule_goes_on() -> None:
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
        await wait_until(lambda: len(ledger.finals()) >= 2)
    first, second = ledger.finals()[:2]
    assert first.outcome == "timeout"
    assert first.error == "job exceeded job_timeout_s=0.03"
    assert second.outcome == "ok"


async def test_job_raising_its_own_timeout_error_is_an_error() -> None:
    ledger = MemoryLedger()

    async def job(slot: Slot) -> None:
        raise TimeoutError("upstream timed out")

    ticker = make(job, 0.02, ledger, job_timeout_s=5)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 1)
    assert ledger.finals()[0].outcome == "error"
    assert ledger.finals()[0].error == "TimeoutError: upstream timed out"


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
        await wait_until(lambda: len(ledger.finals()) >= 3)
    recs = ledger.finals()
    assert calls == 0
    assert {r.outcome for r in recs} == {"idle-market-closed"}
    assert all(r.started_at is None and r.finished_at is not None for r in recs)
    assert not any(w.outcome == "running" for w in ledger.writes)
    assert ticker.stats().runs_idle == len(recs)


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
        await wait_until(lambda: len(ledger.finals()) >= 2)
    assert calls == 0
    assert {r.outcome for r in ledger.finals()} == {"paused"}


async def test_failing_gate_is_an_error_record() -> None:
    ledger = MemoryLedger()

    async def gate() -> bool:
        raise ConnectionError("broker down")

    ticker = make(lambda s: asyncio.sleep(0), 0.02, ledger, market_gate=gate)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 1)
    rec = ledger.finals()[0]
    assert rec.outcome == "error" and rec.error == "gate: ConnectionError: broker down"


async def test_trigger_runs_now_with_manual_slot_id() -> None:
    ledger = MemoryLedger()
    slots: list[Slot] = []

    async def job(slot: Slot) -> None:
        slots.append(slot)

    ticker = make(job, 3600, ledger)  # the next scheduled slot is far away
    async with running(ticker):
        assert ticker.trigger() is True
        await wait_until(lambda: len(ledger.finals()) >= 1)
    (rec,) = ledger.finals()
    assert rec.slot_id.endswith(":manual") and rec.slot_id.startswith("acct:unit:")
    assert rec.outcome == "ok"
    assert slots[0].manual is True
    assert ticker.stats().runs_manual == 1


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
        gate.set()
        await wait_until(lambda: len(ledger.finals()) >= 2)
        assert ticker.trigger() is True
        await wait_until(lambda: any(r.slot_id.endswith(":manual") for r in ledger.finals()))
        await wait_until(lambda: len(ledger.finals()) >= 6)
    scheduled = [r for r in ledger.finals() if not r.slot_id.endswith(":manual")]
    check_accounting(list(scheduled), 50_000)


async def test_ledger_failures_never_stop_the_schedule(caplog: pytest.LogCaptureFixture) -> None:
    ledger = MemoryLedger()
    ledger.fail_next = 6
    calls = 0

    async def job(slot: Slot) -> None:
        nonlocal calls
        calls += 1

    ticker = make(job, 0.02, ledger)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 2)
    assert calls >= 5  # three runs whose records were lost, then recorded ones
    assert "run ledger write failed" in caplog.text


async def test_set_interval_realigns_from_next_slot() -> None:
    ledger = MemoryLedger()
    ticker = make(lambda s: asyncio.sleep(0), 0.02, ledger)
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 3)
        ticker.set_interval(0.05)
        n_before = len(ledger.finals())
        await wait_until(lambda: len(ledger.finals()) >= n_before + 4)
    recs = ledger.finals()
    after = recs[n_before + 1:]  # the run in flight at the change may be on either grid
    check_accounting(list(after), 50_000)
    assert ticker.interval_s == 0.05
    with pytest.raises(ValueError, match="interval_s must be at least 0.001"):
        ticker.set_interval(0)


async def test_slots_follow_the_wall_clock_not_the_monotonic_one() -> None:
    class Shifted:
        """A wall clock 0.3 s ahead of the system's: slots must align to it."""

        def __init__(self, base: TickerClock) -> None:
            self.base = base

        def wall(self) -> float:
            return self.base.wall() + 0.3

    from ops.ticker import SystemClock

    ledger = MemoryLedger()
    ticker = make(lambda s: asyncio.sleep(0), 0.2, ledger, clock=Shifted(SystemClock()))
    async with running(ticker):
        await wait_until(lambda: len(ledger.finals()) >= 2)
    for r in ledger.finals():
        assert slot_us(r.slot_time) % 200_000 == 0
        assert r.started_at is not None
        # started_at is on the ticker's (shifted) wall clock: just after the slot time.
        assert 0 <= (r.started_at - r.slot_time).total_seconds() < 0.2 + 0.05


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


async def test_heartbeat_continues_while_job_hangs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ops.ticker")
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
    await wait_until(
        lambda: sum(1 for b in sink.beats if b.counters.get("t.in_flight") == 1) >= 5,
        what="5 heartbeats during the hung job",
    )
    hb.request_stop()
    await asyncio.wait_for(hb_task, 10)
    t_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t_task
    assert hb.failures == 3
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


async def test_constructor_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="finite"):
        make(lambda s: asyncio.sleep(0), float("nan"), MemoryLedger())
    with pytest.raises(ValueError, match="job_timeout_s must be > 0"):
        make(lambda s: asyncio.sleep(0), 1, MemoryLedger(), job_timeout_s=0)
