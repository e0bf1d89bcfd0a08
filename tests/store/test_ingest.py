"""The stream's one-statement write (`trade_update` ops) against real Postgres: the same rows
as `trade_update_op` + `order_op`, events once and in order, the newest order state only,
and the outage buffer's replay."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.broker.convert import trade_update_from_raw
from ops.core.models import TradeUpdate
from ops.runtime.env import RuntimeEnv
from ops.store import Store, order_op, trade_update_op
from ops.store.embedded import EmbeddedPostgres
from ops.store.ingest import trade_update_row_op
from ops.store.postgres import connect
from tests.store.factories import T0, trade_update

EVENT_COLS = ("event_key", "order_id", "client_order_id", "symbol", "event", "ts",
              "execution_id", "price", "qty", "position_qty", "raw")
ORDER_COLS = ("id", "client_order_id", "symbol", "side", "order_type", "time_in_force", "qty",
              "notional", "filled_qty", "filled_avg_price", "limit_price", "stop_price",
              "status", "asset_class", "created_at", "updated_at", "submitted_at",
              "filled_at", "canceled_at", "raw", "signal_id")


def wire_frame(order_id: str, seq: int, *, status: str = "partially_filled",
               execution_id: str | None = None, updated_ms: int | None = None) -> str:
    """A trade_updates frame as Alpaca sends it (numbers as strings, 'Z' timestamps)."""
    ts = (T0 + timedelta(milliseconds=seq)).isoformat().replace("+00:00", "Z")
    upd = (T0 + timedelta(milliseconds=seq if updated_ms is None else updated_ms)
           ).isoformat().replace("+00:00", "Z")
    data: dict[str, Any] = {
        "event": "partial_fill", "timestamp": ts, "price": "187.25", "qty": "1",
        "position_qty": str(seq), "order": {
            "id": order_id, "client_order_id": f"c-{order_id}",
            "created_at": "2026-01-05T14:30:00Z",
            "updated_at": upd, "submitted_at": "2026-01-05T14:30:00Z", "filled_at": None,
            "canceled_at": None, "symbol": "AAPL", "asset_class": "us_equity", "notional": None,
            "qty": "10", "filled_qty": str(seq), "filled_avg_price": "187.2", "type": "limit",
            "order_type": "limit", "side": "buy", "time_in_force": "day",
            "limit_price": "187.5", "stop_price": None, "status": status,
            "extended_hours": False, "legs": None, "note": "ünïcode \"quoted\" \\ back"}}
    if execution_id is not None:
        data["execution_id"] = execution_id
    return json.dumps({"stream": "trade_updates", "data": data})


def from_wire(text: str) -> TradeUpdate:
    return trade_update_from_raw(json.loads(text), text)


async def _events(db: asyncpg.Connection, account: str) -> list[dict[str, Any]]:
    rows = await db.fetch(f"SELECT {', '.join(EVENT_COLS)} FROM order_events "
                          "WHERE account = $1 ORDER BY id", account)
    return [dict(r) for r in rows]


async def _orders(db: asyncpg.Connection, account: str) -> dict[str, dict[str, Any]]:
    rows = await db.fetch(f"SELECT {', '.join(ORDER_COLS)} FROM orders WHERE account = $1",
                          account)
    return {r["id"]: dict(r) for r in rows}


async def test_same_rows_as_the_two_step_write(ops_store: Store, db: asyncpg.Connection) -> None:
    """Wire updates (raw kept as text) and built ones (raw re-encoded) both store exactly
    what record_trade_updates + upsert_orders stored."""
    wire = [from_wire(wire_frame("w1", i, execution_id=f"wx{i}")) for i in range(3)]
    built = [trade_update("b1", i, execution_id=f"bx{i}") for i in range(3)]
    for u in wire + built:
        await ops_store.write_many([trade_update_op("old", u), order_op("old", u.order)])
    old_orders = await _orders(db, "old")
    await db.execute("DELETE FROM orders")  # keyed by order id alone
    assert await ops_store.write_many([trade_update_row_op("new", u) for u in wire + built]) == 6
    assert await _events(db, "new") == await _events(db, "old")
    assert await _orders(db, "new") == old_orders
    ev = await _events(db, "new")
    assert ev[0]["raw"] == json.loads(wire_frame("w1", 0, execution_id="wx0"))
    assert ev[0]["price"] == Decimal("187.25") and ev[0]["ts"] == T0
    orders = await _orders(db, "new")
    assert orders["w1"]["raw"]["note"] == "ünïcode \"quoted\" \\ back"
    assert orders["w1"]["filled_qty"] == Decimal(2) and orders["b1"]["raw"] == built[-1].order.raw


async def test_events_once_in_order_and_the_newest_order_state(
    ops_store: Store, db: asyncpg.Connection
) -> None:
    frames = [wire_frame("o1", 1, execution_id="x1"), wire_frame("o2", 2, execution_id="x2"),
              wire_frame("o1", 3, execution_id="x3"),
              wire_frame("o1", 1, execution_id="x1"),  # redelivered inside the batch
              # An older snapshot of o1 arriving last must not win.
              wire_frame("o1", 4, execution_id="x4", status="new", updated_ms=0)]
    batch = [from_wire(f) for f in frames]
    assert await ops_store.write_many([trade_update_row_op("large", u) for u in batch]) == 4
    assert [e["event_key"] for e in await _events(db, "large")] == \
        ["fill:o1:1", "fill:o2:2", "fill:o1:3", "fill:o1:4"]
    orders = await _orders(db, "large")
    assert orders["o1"]["updated_at"] == T0 + timedelta(milliseconds=3)
    assert orders["o1"]["filled_qty"] == Decimal(3)
    assert orders["o1"]["raw"] == json.loads(frames[2])["data"]["order"]
    # A later batch: redeliveries store nothing, even under another execution id (a fill
    # is its order and cumulative quantity); an older snapshot changes nothing.
    again = [from_wire(frames[0]), from_wire(wire_frame("o2", 2, execution_id="x2-again",
                                                        updated_ms=1))]
    assert await ops_store.write_many([trade_update_row_op("large", u) for u in again]) == 0
    assert await _orders(db, "large") == orders


async def test_equal_timestamps_go_to_the_later_update(
    ops_store: Store, db: asyncpg.Connection
) -> None:
    a = from_wire(wire_frame("o1", 5, execution_id="a", status="partially_filled"))
    b = from_wire(wire_frame("o1", 5, execution_id="b", status="filled"))
    await ops_store.write_many([trade_update_row_op("large", u) for u in (a, b)])
    assert (await _orders(db, "large"))["o1"]["status"] == "filled"


async def test_the_dispatchers_signal_link_is_kept(
    ops_store: Store, db: asyncpg.Connection
) -> None:
    u = from_wire(wire_frame("o1", 1, execution_id="x1"))
    await ops_store.write(order_op("large", replace(u.order, updated_at=T0), signal_id=42))
    await ops_store.write(trade_update_row_op("large", u))
    order = (await _orders(db, "large"))["o1"]
    assert order["signal_id"] == 42 and order["updated_at"] == u.order.updated_at


async def test_a_value_postgres_refuses_fails_the_write_not_buffered(
    ops_store: Store, db: asyncpg.Connection
) -> None:
    op = trade_update_row_op("large", from_wire(wire_frame("o1", 1, execution_id="x1")))
    bad = replace(op, payload={**op.payload, "price": "12abc"})
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await ops_store.write_many([op, bad])
    assert await _events(db, "large") == [] and await _orders(db, "large") == {}
    assert (await ops_store.buffer_status()).pending == 0


async def test_outage_buffers_one_row_per_update_and_replays_once_in_order(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path
) -> None:
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, pg_dedicated.url())
    store = await Store.open(env, process="stream")
    try:
        first = [from_wire(wire_frame("o1", i, execution_id=f"x{i}")) for i in range(3)]
        await store.write_many([trade_update_row_op("large", u) for u in first[:1]])
        pg_dedicated.stop(mode="fast")
        # Two batches buffered: replayed together, o1 appears in both (one statement then).
        assert await store.write_many([trade_update_row_op("large", u) for u in first]) == 3
        later = [from_wire(wire_frame("o1", i, execution_id=f"x{i}")) for i in range(3, 5)]
        assert await store.write_many([trade_update_row_op("large", u) for u in later]) == 2
        assert (await store.buffer_status()).pending == 5
        pg_dedicated.start()
        assert await store.wait_drained(within_s=30)
    finally:
        await store.close()
    conn = await connect(pg_dedicated.url())
    try:
        # x0 has filled_qty 0: not an identifiable fill, kept under its execution id.
        assert [e["event_key"] for e in await _events(conn, "large")] == \
            ["exec:x0"] + [f"fill:o1:{i}" for i in range(1, 5)]
        order = (await _orders(conn, "large"))["o1"]
        assert order["updated_at"] == T0 + timedelta(milliseconds=4)
        assert order["raw"] == later[-1].raw["data"]["order"]
    finally:
        await conn.close()


async def test_values_holding_the_column_separators_are_stored_verbatim(
    ops_store: Store, db: asyncpg.Connection
) -> None:
    """Batches go to Postgres as one joined string per column unless a value could not be
    split back exactly; then as arrays. Either way, the same rows."""
    odd = ["sym\x1fbol", "\x1e", "", "a\x1eb"]
    updates = [from_wire(wire_frame(f"o{i}", i, execution_id=f"x{i}")) for i in range(4)]
    tricky = [replace(u, order=replace(u.order, symbol=s)) for u, s in zip(updates, odd,
                                                                           strict=True)]
    for i, u in enumerate(tricky):  # one at a time: '' alone cannot be joined either
        await ops_store.write(trade_update_row_op("large", u))
        await ops_store.write_many([trade_update_row_op("pair", u),
                                    trade_update_row_op("pair", updates[i])])
    rows = await db.fetch("SELECT symbol FROM order_events WHERE account = 'large' ORDER BY id")
    assert [r["symbol"] for r in rows] == odd
    rows = await db.fetch("SELECT symbol FROM order_events WHERE account = 'pair' ORDER BY id")
    assert [r["symbol"] for r in rows] == odd  # the second of each pair is a redelivery
    assert await db.fetchval("SELECT count(*) FROM order_events WHERE symbol IS NULL") == 0


async def test_event_ops_with_the_column_separators_are_stored_verbatim(
    ops_store: Store, db: asyncpg.Connection
) -> None:
    """The per-event op (what the buffer replays for older rows and `record_trade_updates`)
    takes the same joined-string path, and the same fallback to arrays."""
    odd = ["sym\x1fbol", "\x1e", "", "a\x1eb"]
    updates = [from_wire(wire_frame(f"e{i}", i, execution_id=f"y{i}")) for i in range(4)]
    tricky = [replace(u, order=replace(u.order, symbol=s)) for u, s in zip(updates, odd,
                                                                           strict=True)]
    for u in tricky:  # one at a time: '' alone cannot be joined either
        await ops_store.write(trade_update_op("single", u))
    await ops_store.write_many([trade_update_op("batch", u) for u in tricky])
    await ops_store.write_many([trade_update_op("plain", u) for u in updates])
    for account, want in (("single", odd), ("batch", odd),
                          ("plain", [u.order.symbol for u in updates])):
        rows = await db.fetch("SELECT symbol, raw FROM order_events WHERE account = $1 "
                              "ORDER BY id", account)
        assert [r["symbol"] for r in rows] == want, account
        assert all(r["raw"] for r in rows)  # the raw payload came through the replay too
