"""One contender of the ticker benchmark, run as its own process:
`python -m bench._ticker_worker KIND TICKS INTERVAL_S` prints one JSON list: the lateness
of every tick in seconds (actual start minus the tick's scheduled wall time).

KIND: "ticker" (ops.runtime.ticker.Ticker), "apscheduler" (APScheduler 3 AsyncIOScheduler
interval job), "sleep" (a naive `while: await asyncio.sleep(interval)` loop, whose
scheduled times are t0 + k * interval, so its lateness is its accumulated drift), "floor"
(a bare loop sleeping to absolute deadlines: the asyncio timer floor, no scheduler).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime, timedelta

from ops.core.models import RunRecord
from ops.runtime.ticker import Slot, Ticker


class NullLedger:
    """The ticker's run ledger, discarded: this measures the scheduler, not the store."""

    async def record_run(self, rec: RunRecord) -> None:
        return None


async def with_ticker(ticks: int, interval_s: float) -> list[float]:
    out: list[float] = []

    async def job(slot: Slot) -> None:
        out.append(time.time() - slot.scheduled_at.timestamp())
        if len(out) >= ticks:
            ticker.request_stop()

    ticker = Ticker("bench", interval_s, job, process="bench", account=None, role="bench",
                    ledger=NullLedger())
    await ticker.run()
    return out


async def with_apscheduler(ticks: int, interval_s: float) -> list[float]:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

    out: list[float] = []
    done = asyncio.Event()
    start = datetime.now(UTC) + timedelta(seconds=0.5)
    start_s = start.timestamp()

    def job() -> None:
        now = time.time()
        k = round((now - start_s) / interval_s)
        out.append(now - (start_s + k * interval_s))
        if len(out) >= ticks:
            done.set()

    sched = AsyncIOScheduler()
    sched.add_job(job, "interval", seconds=interval_s, start_date=start, max_instances=1,
                  misfire_grace_time=None, coalesce=True)
    sched.start()
    await done.wait()
    sched.shutdown(wait=False)
    return out


async def with_sleep(ticks: int, interval_s: float) -> list[float]:
    out: list[float] = []
    t0 = time.time()
    for k in range(1, ticks + 1):
        await asyncio.sleep(interval_s)
        out.append(time.time() - (t0 + k * interval_s))
    return out


async def with_floor(ticks: int, interval_s: float) -> list[float]:
    """The best an asyncio loop can do: sleep to absolute deadlines t0 + k * interval."""
    out: list[float] = []
    loop = asyncio.get_running_loop()
    t0_wall, t0 = time.time(), loop.time()
    for k in range(1, ticks + 1):
        await asyncio.sleep(t0 + k * interval_s - loop.time())
        out.append(time.time() - (t0_wall + k * interval_s))
    return out


KINDS = {"ticker": with_ticker, "apscheduler": with_apscheduler, "sleep": with_sleep,
         "floor": with_floor}


def main() -> None:
    kind, ticks, interval_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
    lateness = asyncio.run(KINDS[kind](ticks, interval_s))
    print(json.dumps(lateness))


if __name__ == "__main__":
    main()
