"""Signal -> broker acknowledgement benchmark: the real dispatcher role (`python -m ops run
dispatcher`, its own process, woken by Postgres LISTEN/NOTIFY) against the simulator.

Each signal is INSERTed into `signals` (the trigger NOTIFYs); the latency runs from just
before that INSERT until `decided_at`, which the dispatcher stamps when the broker has
acknowledged the order (status "submitted"). Signals go one at a time, after a warm-up
signal proves the dispatcher has reconciled and is open.
Baseline, same run: the same order straight through `ops.broker.Broker.submit_order` from
this process (one REST round trip, no database, no dispatcher): the floor.
Target: p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from decimal import Decimal
from typing import Any

from bench.common import BenchResult, Figure, bench_main, durable_postgres, percentile, tmp_dir
from bench.rig import ACCOUNT, RoleRig, bench_simulator
from ops.broker import Broker, BrokerEndpoints, BrokerSettings
from ops.core.models import OrderRequest, Side
from ops.runtime.credentials import Credentials
from ops.store.postgres import connect

INSERT = """
INSERT INTO signals (idempotency_key, account, symbol, side, qty, strategy)
VALUES ($1, $2, 'AAPL', 'buy', 1, 'bench') RETURNING id
"""
DONE = ("submitted", "rejected", "unknown", "expired", "filled", "canceled")


async def one_signal(conn: Any, timeout_s: float) -> tuple[float, str, str | None]:
    """Insert one signal; wait for its decision. (latency s, status, reason)."""
    t0 = time.time()
    sid = await conn.fetchval(INSERT, f"bench:{uuid.uuid4().hex}", ACCOUNT)
    deadline = time.monotonic() + timeout_s
    while True:
        row = await conn.fetchrow("SELECT status, reason, decided_at FROM signals WHERE id = $1",
                                  sid)
        if row["status"] in DONE and row["decided_at"] is not None:
            return row["decided_at"].timestamp() - t0, row["status"], row["reason"]
        if time.monotonic() > deadline:
            raise RuntimeError(f"signal {sid} not decided within {timeout_s}s: {dict(row)}")
        await asyncio.sleep(0.002)


async def measure(url: str, quick: bool) -> BenchResult:
    n = 5 if quick else 200
    res = BenchResult("dispatch", params={"signals": n})
    sim = bench_simulator(market_step_s=0.25)
    await sim.start()
    rig = RoleRig(sim, tmp_dir("ops-bench-dispatch-"), url, dispatcher_s=5.0)
    conn = await connect(url)
    spec = sim.account(ACCOUNT)
    # The same REST budget the dispatcher gets from bench/rig.py's config (the default,
    # Alpaca's 200/min, would make the baseline wait on our own rate limiter).
    broker = Broker(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url),
                    Credentials("bench/large", ACCOUNT, spec.key_id, spec.secret),
                    BrokerSettings(rate_limit_per_min=100_000, rate_limit_burst=1000))
    try:
        await rig.role("dispatcher")
        _, status, reason = await one_signal(conn, timeout_s=120)  # warm-up: reconciled, open
        if status != "submitted":
            raise RuntimeError(f"warm-up signal {status}: {reason}")
        lat: list[float] = []
        for _ in range(n):
            seconds, status, reason = await one_signal(conn, timeout_s=30)
            if status != "submitted":
                raise RuntimeError(f"signal {status}: {reason}")
            lat.append(seconds * 1000)
            await asyncio.sleep(0.02)
        base: list[float] = []
        for _ in range(n):
            req = OrderRequest("AAPL", Side.BUY, f"bench-{uuid.uuid4().hex[:20]}", qty=Decimal(1))
            t0 = time.perf_counter()
            result = await broker.submit_order(req)
            base.append((time.perf_counter() - t0) * 1000)
            if result.outcome != "accepted":
                raise RuntimeError(f"baseline submit {result.outcome}")
            await asyncio.sleep(0.02)
    finally:
        broker.close()
        await conn.close()
        await rig.close()
        await sim.stop()
    res.figures += [
        Figure("signal->ack p50", "ms", round(percentile(lat, 50), 2),
               round(percentile(base, 50), 2), "direct REST submit"),
        Figure("signal->ack p99", "ms", round(percentile(lat, 99), 2),
               round(percentile(base, 99), 2), "direct REST submit", "<= 50",
               note=f"max {max(lat):.1f} ms over {n} signals"),
    ]
    return res


def run(quick: bool) -> BenchResult:
    with durable_postgres() as server:
        return asyncio.run(measure(server.url(), quick))


def main() -> None:
    bench_main("dispatch", run)


if __name__ == "__main__":
    main()
