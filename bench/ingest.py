"""Trade-update ingest benchmark: the real stream role (`python -m ops run stream`, its own
process) against the simulator, storing into a durable Postgres.

1. Burst: N fills are generated while the account's stream is muted, then released at
   once (`faults.unmute(deliver=True)` semantics); figure = events/s from release until
   every event is committed in order_events (polled every 20 ms, counting only rows past
   the last id seen, so the poll does not load the Postgres being measured).
2. Paced: events released one by one at 1,000/s; latency of each fill from the moment the
   simulator hands it to the socket until a poller (every 2 ms, separate connection) sees
   it committed; p50/p99. The poll interval bounds the over-estimate.
Baseline, same run, same simulator, same Postgres: bench/_ingest_baseline.py, the same
TradeStream with one INSERT (one commit) per event. Also measured: the receive-only
ceiling, that TradeStream storing nothing, to tell the stream path's cost from storage's.
Targets: >= 20,000 events/s; p99 <= 10 ms at 1,000 events/s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import BenchResult, Figure, bench_main, durable_postgres, percentile, tmp_dir
from bench.rig import ACCOUNT, RoleRig, bench_simulator
from ops.sim import Simulator
from ops.store.postgres import connect

QTY = 10  # shares per order; fill lot 1 -> 10 fills + 1 "new" event per order
POLL_S = 0.002


async def make_events(sim: Simulator, fills: int) -> list[bytes]:
    """Generate trade-update frames for about `fills` fills while the stream is muted, and
    take them out of the mute buffer (the caller delivers them). Yields to the loop between
    market steps: the simulator shares this loop, and a generation that held it past the
    stream's ping timeout (30 s, on a busy host) had the role drop the connection."""
    st = sim.engine.states[ACCOUNT]
    sim.faults.mute(ACCOUNT)
    orders = []
    for i in range(max(1, fills // QTY)):
        if i % 100 == 0:
            await asyncio.sleep(0)
        # Buys only (the account's cash is effectively unlimited): a sell could be refused
        # for the position the previous rounds left.
        orders.append(sim.engine.submit(st, {"symbol": "AAPL", "qty": str(QTY), "side": "buy",
                                             "type": "market", "time_in_force": "day"}))
    while any(o.is_open for o in orders):
        sim.market.step()
        await asyncio.sleep(0)
    held = sim.hub.faults.muted_buffer.pop(ACCOUNT, [])
    sim.faults.unmute(ACCOUNT, deliver=False)
    return held


def exec_id(frame: bytes) -> str | None:
    data: dict[str, Any] = json.loads(frame)["data"]
    return data.get("execution_id")


async def stored_since(conn: Any, label: str, after_id: int, want: int, deadline: float) -> None:
    """Wait until `want` rows of `label` with id > `after_id` are committed.

    Each poll counts only the rows past the highest id seen so far (a short primary-key
    range), so polling does not load the Postgres it measures; a full count confirms the
    total (a row committed late below that id is then still counted)."""
    seen, top = 0, after_id
    while True:
        if seen >= want:
            full = int(await conn.fetchval(
                "SELECT count(*) FROM order_events WHERE id > $1 AND account = $2",
                after_id, label))
            if full >= want:
                return
            seen, top = full, after_id  # cannot happen with one writer; recount in full
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{label}: {seen} of {want} stored in time")
        await asyncio.sleep(0.02)
        row = await conn.fetchrow(
            "SELECT count(*) AS n, max(id) AS top FROM order_events WHERE id > $1 "
            "AND account = $2", top, label)
        if row["n"]:
            seen, top = seen + int(row["n"]), int(row["top"])


async def burst(sim: Simulator, conn: Any, label: str, fills: int) -> tuple[float, int]:
    frames = await make_events(sim, fills)
    base_id = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM order_events"))
    t0 = time.perf_counter()
    for fr in frames:
        sim.hub.deliver(ACCOUNT, fr, faults=False)
    await stored_since(conn, label, base_id, len(frames), t0 + 60 + len(frames) / 500)
    return len(frames) / (time.perf_counter() - t0), len(frames)


def read_count(path: Path) -> int:
    text = path.read_text() if path.exists() else ""
    return int(text) if text else 0


async def receive_only(sim: Simulator, rig: RoleRig, url: str, fills: int,
                       count_file: Path) -> float:
    """Events/s one TradeStream receives and parses when nothing is stored: the ceiling
    the stream path puts on ingest, measured with the same burst."""
    spec = sim.account(ACCOUNT)
    proc = await rig.spawn("-m", "bench._ingest_baseline", url, sim.stream_url, spec.key_id,
                           spec.secret, str(count_file), name="receive-only")
    try:
        await sim.wait_stream(ACCOUNT, within_s=90)
        frames = await make_events(sim, fills)
        t0 = time.perf_counter()
        for fr in frames:
            sim.hub.deliver(ACCOUNT, fr, faults=False)
        deadline = t0 + 60 + len(frames) / 500
        while True:
            got = read_count(count_file)
            if got >= len(frames):
                return len(frames) / (time.perf_counter() - t0)
            if time.perf_counter() > deadline:
                raise RuntimeError(f"receive-only: {got} of {len(frames)} received")
            await asyncio.sleep(0.01)
    finally:
        await proc.stop()


async def paced(sim: Simulator, url: str, label: str, events: int, rate: float) -> list[float]:
    """Latencies (ms) of every fill, released at `rate` events/s."""
    frames = await make_events(sim, events)
    keys = [exec_id(f) for f in frames]
    sent: dict[str, float] = {}
    seen: dict[str, float] = {}
    poll_conn = await connect(url)
    last_id = int(await poll_conn.fetchval("SELECT coalesce(max(id), 0) FROM order_events"))
    done = asyncio.Event()

    async def poller() -> None:
        nonlocal last_id
        want = {k for k in keys if k}
        while not want <= seen.keys():
            rows = await poll_conn.fetch(
                "SELECT id, execution_id FROM order_events WHERE id > $1 AND account = $2",
                last_id, label)
            now = time.perf_counter()
            for r in rows:
                last_id = max(last_id, r["id"])
                if r["execution_id"]:
                    seen.setdefault(r["execution_id"], now)
            await asyncio.sleep(POLL_S)
        done.set()

    task = asyncio.create_task(poller())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i, (fr, key) in enumerate(zip(frames, keys, strict=True)):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if key:
            sent[key] = time.perf_counter()
        sim.hub.deliver(ACCOUNT, fr, faults=False)
    try:
        await asyncio.wait_for(done.wait(), 60)
    finally:
        task.cancel()
        await poll_conn.close()
    return [(seen[k] - sent[k]) * 1000 for k in sent]


async def disconnected(sim: Simulator) -> None:
    for _ in range(400):  # the simulator notices the closed socket
        if not sim.hub.connected(ACCOUNT):
            return
        await asyncio.sleep(0.05)


async def measure(url: str, quick: bool) -> BenchResult:
    fills, paced_events, rate = (400, 200, 1000.0) if quick else (20_000, 3000, 1000.0)
    res = BenchResult("ingest", params={"burst_fills": fills, "paced_events": paced_events,
                                        "paced_rate": rate, "poll_interval_ms": POLL_S * 1000})
    home = tmp_dir("ops-bench-ingest-")
    sim = bench_simulator(fill_lot=1)
    await sim.start()
    rig = RoleRig(sim, home, url)
    conn = await connect(url)
    figures: dict[str, dict[str, float]] = {}
    try:
        for label in ("large", "baseline"):
            if label == "large":
                proc = await rig.role("stream")
            else:
                spec = sim.account(ACCOUNT)
                proc = await rig.spawn("-m", "bench._ingest_baseline", url, sim.stream_url,
                                       spec.key_id, spec.secret, name="baseline")
            await sim.wait_stream(ACCOUNT, within_s=90)
            await asyncio.sleep(0.5)  # let the role's on-connect backfill finish
            rate_burst, n = await burst(sim, conn, label, fills)
            lat = await paced(sim, url, label, paced_events, rate)
            figures[label] = {"rate": rate_burst, "events": n, "p50": percentile(lat, 50),
                              "p99": percentile(lat, 99), "max": max(lat)}
            await proc.stop()
            await disconnected(sim)
        ceiling = await receive_only(sim, rig, url, fills, home / "received")
    finally:
        await conn.close()
        await rig.close()
        await sim.stop()
    role, base = figures["large"], figures["baseline"]
    res.figures += [
        Figure("burst stored", "events/s", round(role["rate"]), round(base["rate"]),
               "1 INSERT per event", ">= 20000",
               note=f"{int(role['events'])} events; receive-only ceiling (same stream, no "
                    f"database) {ceiling:,.0f}/s"),
        Figure("latency p50 @1k/s", "ms", round(role["p50"], 2), round(base["p50"], 2),
               "1 INSERT per event"),
        Figure("latency p99 @1k/s", "ms", round(role["p99"], 2), round(base["p99"], 2),
               "1 INSERT per event", "<= 10",
               note=f"max {role['max']:.1f} ms; includes <= {POLL_S * 1000:g} ms poll"),
    ]
    res.params["raw"] = figures
    return res


def run(quick: bool) -> BenchResult:
    with durable_postgres() as server:
        return asyncio.run(measure(server.url(), quick))


def main() -> None:
    bench_main("ingest", run)


if __name__ == "__main__":
    main()
    sys.exit(0)
