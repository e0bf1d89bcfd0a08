"""Outage benchmark: N trade-update writes through `ops.store.Store` while Postgres is down
(they land in the SQLite buffer), then the replay once Postgres is back; then counts what
reached Postgres (0 lost, 0 duplicated). Writes go in batches of the stream writer's size.

Baselines, same run, same rows: plain `sqlite3` executemany into a WAL file with
synchronous=FULL (the buffer's durability) for the buffer rate; asyncpg COPY into a copy of
order_events, one transaction per drain batch, for the replay rate.
Targets: >= 20,000 rows/s into the buffer, replay >= 40,000 rows/s, 0 lost, 0 duplicated.

A second outage replays the stream role's own op (`trade_update`: the event plus an upsert
of its order, two tables per row), reported beside the first without a target.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from bench.common import BenchResult, Figure, bench_main, durable_postgres, tmp_dir
from bench.fills import fills
from ops.core.models import TradeUpdate
from ops.roles.stream import BATCH_MAX
from ops.runtime.env import RuntimeEnv
from ops.store import Op, Store, StoreSettings
from ops.store.ingest import trade_update_row_op
from ops.store.ops import dumps
from ops.store.postgres import connect
from ops.store.store import trade_update_op

DRAIN_BATCH = StoreSettings().drain_batch


def sqlite_baseline(path: Path, updates: list[TradeUpdate]) -> float:
    """Rows/s of plain batched inserts of the same payloads, same durability as the buffer."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, "
               "payload TEXT, process TEXT, created_at REAL)")
    t0 = time.perf_counter()
    for i in range(0, len(updates), BATCH_MAX):
        rows = [("order_event", dumps(trade_update_op("large", u).payload), "bench", time.time())
                for u in updates[i:i + BATCH_MAX]]
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO pending (kind, payload, process, created_at) "
                       "VALUES (?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    rate = len(updates) / (time.perf_counter() - t0)
    db.close()
    return rate


async def postgres_baseline(url: str, updates: list[TradeUpdate]) -> float:
    """Rows/s of COPY of the same rows into a copy of order_events, DRAIN_BATCH per commit."""
    # A plain connection: ours sets a text-format jsonb codec, which COPY's binary
    # format cannot use.
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE bench_events (LIKE order_events INCLUDING DEFAULTS "
                           "INCLUDING CONSTRAINTS INCLUDING INDEXES)")
        cols = ["account", "event_key", "order_id", "client_order_id", "symbol", "event", "ts",
                "execution_id", "price", "qty", "position_qty", "raw"]
        t0 = time.perf_counter()
        for i in range(0, len(updates), DRAIN_BATCH):
            records = [("large", u.event_key, u.order.id, u.order.client_order_id, u.order.symbol,
                        u.event, u.timestamp, u.execution_id, u.price, u.qty, u.position_qty,
                        json.dumps(dict(u.raw)))
                       for u in updates[i:i + DRAIN_BATCH]]
            async with conn.transaction():
                await conn.copy_records_to_table("bench_events", records=records, columns=cols)
        return len(updates) / (time.perf_counter() - t0)
    finally:
        await conn.close()


async def outage(server: Any, home: Path, account: str, updates: list[TradeUpdate],
                 op: Callable[[str, TradeUpdate], Op]) -> tuple[float, float, int, bool, str]:
    """Write `op(account, u)` for each update in stream-sized batches while Postgres is
    down (building the ops is timed too), bring it back, replay.
    Returns (buffer rows/s, replay rows/s, rows pending before the replay, drained, outcome).
    """
    env = RuntimeEnv(config_path=home / "ops.toml", home=home, database_url=server.url())
    settings = StoreSettings(drain_poll_s=0.05, connect_timeout_s=1.0,
                             buffer_path=home / f"buffer-{account}.sqlite")
    n = len(updates)
    store = await Store.open(env, process=f"bench-{account}", config=settings)
    try:
        await asyncio.to_thread(server.stop, "fast")
        t0 = time.perf_counter()
        for i in range(0, n, BATCH_MAX):
            await store.write_many([op(account, u) for u in updates[i:i + BATCH_MAX]])
        buffer_rate = n / (time.perf_counter() - t0)
        pending = (await store.buffer_status()).pending
        await asyncio.to_thread(server.start)
        # Replay now rather than when the drainer's back-off (<= 2 s) next looks: this
        # measures replay throughput; the drainer, if it wakes meanwhile, finds it "busy".
        t1 = time.perf_counter()
        outcome = await store.drain_once()
        replay_rate = n / (time.perf_counter() - t1)
        drained = await store.wait_drained(within_s=max(60.0, n / 2000))
    finally:
        await store.close()
    return buffer_rate, replay_rate, pending, drained, outcome


async def lost_and_duplicated(url: str, account: str, updates: list[TradeUpdate]
                              ) -> tuple[int, int]:
    conn = await connect(url)
    try:
        stored = await conn.fetchval("SELECT count(*) FROM order_events WHERE account = $1",
                                     account)
        distinct = await conn.fetchval(
            "SELECT count(DISTINCT event_key) FROM order_events WHERE account = $1", account)
    finally:
        await conn.close()
    keys = {u.event_key for u in updates}
    return len(keys) - int(distinct), int(stored) - int(distinct)


async def measure(server: Any, home: Path, n: int) -> BenchResult:
    res = BenchResult("outage", params={"rows": n, "write_batch": BATCH_MAX,
                                        "drain_batch": DRAIN_BATCH})
    updates = fills(n)
    url = server.url()
    buffer_rate, replay_rate, pending, drained, outcome = await outage(
        server, home, "large", updates, trade_update_op)
    res.notes.append(f"replay outcome {outcome!r}")
    lost, dup = await lost_and_duplicated(url, "large", updates)
    # The stream role's own write: each row also upserts its order (ops/store/ingest.py).
    tiny = fills(n, account="tiny")
    _, stream_rate, _, stream_drained, _ = await outage(
        server, home, "tiny", tiny, trade_update_row_op)
    stream_lost, stream_dup = await lost_and_duplicated(url, "tiny", tiny)
    lost, dup = lost + stream_lost, dup + stream_dup
    drained = drained and stream_drained
    sqlite_rate = await asyncio.to_thread(sqlite_baseline, home / "baseline.sqlite", updates)
    pg_rate = await postgres_baseline(url, updates)
    res.figures += [
        Figure("buffer write rate", "rows/s", round(buffer_rate), round(sqlite_rate),
               "sqlite3 WAL batched", ">= 20000", note=f"{pending} pending before replay"),
        Figure("replay rate", "rows/s", round(replay_rate), round(pg_rate),
               "Postgres COPY batched", ">= 40000",
               note="store.drain_once() right after Postgres is back (the drainer's "
               "back-off adds <= 2 s before it starts)" + ("" if drained else "; NOT DRAINED")),
        Figure("replay rate, event + order rows", "rows/s", round(stream_rate),
               note="the stream role's buffered op: each row stores the event and upserts "
               "its order (no target: the target is about rows of one table)"),
        Figure("lost", "rows", lost, target="== 0", note="both runs"),
        Figure("duplicated", "rows", dup, target="== 0", note="both runs"),
    ]
    return res


def run(quick: bool) -> BenchResult:
    n = 2000 if quick else 50_000
    home = tmp_dir("ops-bench-outage-")
    with durable_postgres() as server:
        return asyncio.run(measure(server, home, n))


def main() -> None:
    bench_main("outage", run)


if __name__ == "__main__":
    main()
