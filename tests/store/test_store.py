"""Store writes and reads against real Postgres: idempotency, forward-only guards, reads."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.core.config import BufferConfig, DatabaseConfig
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store, StoreSettings, order_op, trade_update_op
from ops.store.ops import Op
from ops.store.postgres import connect
from tests.store.factories import (
    T0,
    account_info,
    heartbeat,
    order,
    position,
    run_record,
    trade_update,
)

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "ops.toml"


@pytest.fixture
def store(ops_store: Store) -> Store:
    return ops_store


async def test_trade_updates_stored_exactly_once(store: Store, db: asyncpg.Connection) -> None:
    updates = [trade_update("o1", i, execution_id=f"x{i}") for i in range(5)]
    updates.append(trade_update("o1", 99, event="new"))
    assert await store.record_trade_updates("large", updates) == 6
    # A redelivery (stream reconnect + REST backfill) stores nothing new.
    assert await store.record_trade_updates("large", updates[2:]) == 0
    rows = await db.fetch("SELECT event_key, qty, raw FROM order_events ORDER BY id")
    assert [r["event_key"] for r in rows] == [u.event_key for u in updates]
    assert rows[0]["qty"] == Decimal("0") and rows[0]["raw"] == {"seq": 0, "event": "fill"}
    # The same event key under another account is another event.
    assert await store.record_trade_updates("tiny", updates[:1]) == 1
    fills = await db.fetchval("SELECT count(*) FROM fills")
    assert fills == 6


async def test_orders_only_move_forward(store: Store, db: asyncpg.Connection) -> None:
    later = T0 + timedelta(seconds=5)
    await store.upsert_orders("large", [order("o1", status="filled", updated=later,
                                              filled_qty="10")])
    await store.upsert_orders("large", [order("o1", status="new", updated=T0)])
    row = await db.fetchrow("SELECT status, filled_qty FROM orders WHERE id = 'o1'")
    assert (row["status"], row["filled_qty"]) == ("filled", Decimal("10"))
    # A write the schema refuses is a real error: it propagates and is never buffered.
    sid = await store.insert_signal(account="large", symbol="AAPL", side="buy", qty=Decimal(1))
    assert sid is not None
    with pytest.raises(asyncpg.CheckViolationError):
        await store.record_signal_decision(sid, "not-a-status")
    assert (await store.buffer_status()).pending == 0


async def test_runs_never_go_backwards(store: Store, db: asyncpg.Connection) -> None:
    await store.record_run(run_record("pm", T0, outcome="running"))
    await store.record_run(run_record("pm", T0, outcome="ok"))
    await store.record_run(run_record("pm", T0, outcome="running"))
    await store.record_run(run_record("pm", T0, outcome="error"))
    assert await db.fetchval("SELECT outcome FROM runs") == "ok"
    await store.record_run(run_record("pm", T0 + timedelta(minutes=1), outcome="error"))
    snap = await store.latest_runs()
    assert snap.source == "postgres"
    assert [(r.process, r.outcome, r.slot_time) for r in snap.rows] == [
        ("pm", "error", T0 + timedelta(minutes=1))]


async def test_latest_runs_is_the_last_completed_run_of_every_process(
    store: Store, db: asyncpg.Connection
) -> None:
    # Interleaved processes, an in-flight slot newer than the last completed one, and a
    # process whose only run is still running: the index-skipping query must agree with
    # the plain definition (DISTINCT ON over the whole ledger).
    procs = ["a-dispatcher", "b-stream", "c-pm", "d-only-running"]
    for k in range(30):
        for i, proc in enumerate(procs[:3]):
            slot = T0 + timedelta(seconds=k * 5 + i)
            await store.record_run(run_record(proc, slot, outcome="error" if k % 7 else "ok"))
    await store.record_run(run_record("b-stream", T0 + timedelta(hours=1), outcome="running"))
    await store.record_run(run_record("d-only-running", T0, outcome="running"))
    snap = await store.latest_runs()
    expected = await db.fetch("""
        SELECT DISTINCT ON (process) process, slot_time, outcome FROM runs
        WHERE finished_at IS NOT NULL AND outcome <> 'running'
        ORDER BY process, finished_at DESC""")
    got = sorted((r.process, r.slot_time, r.outcome) for r in snap.rows)
    assert got == [(r["process"], r["slot_time"], r["outcome"]) for r in expected]
    assert [p for p, _, _ in got] == procs[:3]


async def test_heartbeats_guarded_by_ts(store: Store) -> None:
    await store.heartbeat(heartbeat("p1", T0 + timedelta(seconds=2), n=2))
    await store.heartbeat(heartbeat("p1", T0, n=1))
    snap = await store.heartbeats()
    assert [(h.process, h.ts, h.counters) for h in snap.rows] == [
        ("p1", T0 + timedelta(seconds=2), {"events": 2})]


async def test_position_sync_replaces_set_and_ignores_older(
    store: Store, db: asyncpg.Connection
) -> None:
    t1, t2 = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    await store.sync_positions("large", [position("AAPL", "10"), position("MSFT", "-3")], t1)
    await store.sync_positions("large", [position("AAPL", "12")], t2)
    # An older sync replayed late must not bring MSFT back.
    await store.sync_positions("large", [position("AAPL", "10"), position("MSFT", "-3")], t1)
    snap = await store.positions("large")
    assert [(p.position.symbol, p.position.qty, p.synced_at) for p in snap.rows] == [
        ("AAPL", Decimal("12"), t2)]
    assert snap.rows[0].position.current_price == Decimal("101.123456789")
    assert snap.rows[0].opened_at == t1  # first seen, kept across syncs
    assert await db.fetchval("SELECT count(*) FROM position_history") == 3
    await store.sync_positions("large", [], t2 + timedelta(minutes=1))
    assert (await store.positions("large")).rows == []
    assert (await store.positions("tiny")).rows == []


async def test_account_state_and_controls(store: Store) -> None:
    await store.record_account("large", account_info("100500"), T0 + timedelta(seconds=1))
    await store.record_account("large", account_info("1"), T0)
    (state,) = (await store.account_states()).rows
    assert (state.name, state.equity, state.account_number) == ("large", Decimal("100500"),
                                                                "PA123")
    await store.set_control("large", "kill_switch", {"mode": "halt"}, "ops-cli",
                            at=T0 + timedelta(seconds=1))
    await store.set_control("large", "kill_switch", {"mode": "off"}, "old", at=T0)
    (ctrl,) = (await store.controls("large")).rows
    assert (ctrl.key, ctrl.value, ctrl.updated_by) == ("kill_switch", {"mode": "halt"},
                                                       "ops-cli")
    assert (await store.controls("tiny")).rows == []


async def test_incidents_dedupe_bump_close(store: Store) -> None:
    first = await store.open_incident("stale-heartbeat", detail="no heartbeat 30s",
                                      process="large-stream", dedupe_key="stale:large-stream")
    again = await store.open_incident("stale-heartbeat", detail="still stale",
                                      process="large-stream", dedupe_key="stale:large-stream")
    assert again == first
    await store.bump_incident(dedupe_key="stale:large-stream")
    await store.bump_incident(incident_id=first, detail="restarted twice")
    (inc,) = (await store.open_incidents()).rows
    assert (inc.id, inc.restarts, inc.detail) == (first, 2, "restarted twice")
    await store.close_incident(dedupe_key="stale:large-stream")
    assert (await store.open_incidents()).rows == []
    reopened = await store.open_incident("stale-heartbeat", detail="again",
                                         dedupe_key="stale:large-stream")
    assert reopened != first


async def test_signals_insert_once_notify_and_decide(
    store: Store, pg_url: str
) -> None:
    listener = await connect(pg_url)
    got: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("signals", lambda *a: got.put_nowait(a[3]))
    try:
        sid = await store.insert_signal(account="large", symbol="AAPL", side="buy",
                                        qty=Decimal(5), idempotency_key="strat:1")
        same = await store.insert_signal(account="large", symbol="AAPL", side="buy",
                                         qty=Decimal(5), idempotency_key="strat:1")
        assert sid is not None and same == sid
        assert await asyncio.wait_for(got.get(), timeout=10) == "large"
        with pytest.raises(ValueError, match="exactly one of qty or notional"):
            await store.insert_signal(account="large", symbol="AAPL", side="buy")
        await store.record_signal_decision(sid, "submitted", client_order_id="coid-1",
                                           decided_at=T0 + timedelta(seconds=2), attempts=1)
        await store.record_signal_decision(sid, "rejected", reason="stale",
                                           decided_at=T0 + timedelta(seconds=1))
        row = await listener.fetchrow("SELECT status, client_order_id, attempts FROM signals")
        assert tuple(row) == ("submitted", "coid-1", 1)
    finally:
        await listener.close()


async def test_bad_write_propagates_not_buffered(store: Store) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await store.insert_signal(account="large", symbol="AAPL", side="sideways",
                                  qty=Decimal(1))
    assert (await store.buffer_status()).pending == 0
    assert store.database_reachable


async def test_close_is_idempotent(ops_env: RuntimeEnv) -> None:
    s = await Store.open(ops_env, process="twice")
    await s.close()
    await s.close()


async def test_open_with_ops_toml_config(ops_env: RuntimeEnv) -> None:
    base = load_config(DEMO_CONFIG)
    cfg = replace(
        base,
        buffer=BufferConfig(path="${OPS_HOME}/custom.sqlite3", drain_batch=7,
                            drain_interval_s=0.5),
        database=DatabaseConfig(pool_max=2, connect_timeout_s=1.5, command_timeout_s=9),
    )
    settings = StoreSettings.from_config(cfg, ops_env)
    assert (settings.drain_batch, settings.drain_poll_s, settings.pool_max_size) == (7, 0.5, 2)
    assert (settings.connect_timeout_s, settings.command_timeout_s) == (1.5, 9)
    s = await Store.open(ops_env, process="configured", config=cfg)
    try:
        assert s.buffer.path == ops_env.home / "custom.sqlite3"
        await s.heartbeat(heartbeat("configured", T0))
        assert [h.process for h in (await s.heartbeats()).rows] == ["configured"]
    finally:
        await s.close()


async def test_events_and_order_snapshots_in_one_transaction(
    store: Store, db: asyncpg.Connection
) -> None:
    us = [trade_update("o9", i, execution_id=f"e{i}") for i in range(3)]
    ops = [trade_update_op("large", u) for u in us] + [order_op("large", u.order) for u in us]
    await store.write_many(ops)
    assert await db.fetchval("SELECT count(*) FROM order_events") == 3
    assert await db.fetchval("SELECT updated_at FROM orders WHERE id = 'o9'") == \
        us[-1].order.updated_at
    # All or nothing: a refused write in the batch takes the new event down with it.
    sid = await store.insert_signal(account="large", symbol="AAPL", side="buy", qty=Decimal(1))
    assert sid is not None
    refused = Op("signal_decision", {"signal_id": sid, "status": "not-a-status",
                                     "decided_at": "2024-05-01T14:30:00+00:00"})
    with pytest.raises(asyncpg.CheckViolationError):
        await store.write_many([trade_update_op("large", trade_update("o10", 1)), refused])
    assert await db.fetchval("SELECT count(*) FROM order_events") == 3


async def test_a_one_statement_batch_is_all_or_nothing(store: Store,
                                                       db: asyncpg.Connection) -> None:
    """A batch of events is sent as one statement without BEGIN/COMMIT: a bad row refuses
    the whole batch, and the pooled connection (released without asyncpg's reset query)
    comes back clean for the next write."""
    good = [trade_update_op("large", trade_update("o1", i, execution_id=f"x{i}"))
            for i in range(3)]
    bad = trade_update_op("large", trade_update("o1", 3, execution_id="x3"))
    bad = Op(bad.kind, {**bad.payload, "qty": "not-a-number"})
    with pytest.raises(asyncpg.InvalidTextRepresentationError):
        await store.write_many([*good, bad])
    assert await db.fetchval("SELECT count(*) FROM order_events") == 0
    for _ in range(store.settings.pool_max_size + 1):  # every pooled connection, and one
        assert await store.write_many(good) in (0, 3)
    assert await db.fetchval("SELECT count(*) FROM order_events") == 3
    assert await db.fetchval("SELECT count(*) FROM pg_stat_activity "
                             "WHERE state LIKE 'idle in transaction%'") == 0
