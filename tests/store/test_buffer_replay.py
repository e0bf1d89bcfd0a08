"""The outage buffer in one process: buffered reads say so, the ordering rule, replay after
a crash between commit and delete, and quarantine of rows Postgres refuses."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.runtime.env import RuntimeEnv
from ops.store import Op, Store, StoreSettings, trade_update_op
from ops.store.buffer import Buffer, PendingRow, decode_ops
from ops.store.embedded import EmbeddedPostgres
from ops.store.migrate import migrate
from ops.store.ops import apply_ops, enc
from ops.store.postgres import connect
from ops.store.store import DrainLock
from tests.store.factories import (
    T0,
    account_info,
    heartbeat,
    position,
    run_record,
    trade_update,
)
from tests.store.reads import stored_qtys


def _event_ops(account: str, order_id: str, seqs: range) -> list[Op]:
    return [Op("order_event", {
        "account": account, "event_key": f"{order_id}:{i}", "order_id": order_id,
        "client_order_id": None, "symbol": "AAPL", "event": "fill",
        "ts": (T0 + timedelta(milliseconds=i)).isoformat(), "execution_id": None,
        "price": "1.5", "qty": str(i), "position_qty": None, "raw": {"seq": i},
    }) for i in seqs]


@pytest.fixture
async def buffer(tmp_path: Path) -> AsyncIterator[Buffer]:
    b = await Buffer.open(tmp_path / "buffer.sqlite3")
    try:
        yield b
    finally:
        await b.close()



async def test_reads_during_outage_come_from_buffer_and_say_so(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path
) -> None:
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, pg_dedicated.url())
    store = await Store.open(env, process="large-stream")
    try:
        await store.heartbeat(heartbeat("large-stream", T0, n=1))
        await store.sync_positions("large", [position("AAPL", "10")], T0)
        await store.record_account("large", account_info("100000"), T0)
        await store.set_control("large", "kill_switch", {"mode": "halt"}, "ops", at=T0)
        await store.record_run(run_record("large-stream", T0))
        await store.open_incident("stale", detail="x", dedupe_key="stale:a")
        assert (await store.heartbeats()).source == "postgres"

        pg_dedicated.stop(mode="fast")
        later = T0 + timedelta(seconds=30)
        await store.heartbeat(heartbeat("large-stream", later, n=2))
        await store.record_trade_updates("large", [trade_update("o1", 1)])
        assert not store.database_reachable
        status = await store.buffer_status()
        assert status.pending == 2 and status.oldest_age_s is not None

        hbs = await store.heartbeats()
        assert hbs.source == "buffer" and hbs.buffered
        assert [(h.ts, h.counters) for h in hbs.rows] == [(later, {"events": 2})]
        assert hbs.as_of == later
        pos = await store.positions("large")
        assert pos.source == "buffer"
        assert [(p.position.symbol, p.position.qty) for p in pos.rows] == [("AAPL",
                                                                            Decimal("10"))]
        accts = await store.account_states()
        assert accts.source == "buffer" and accts.rows[0].equity == Decimal("100000")
        ctrls = await store.controls("large")
        assert ctrls.source == "buffer" and ctrls.rows[0].value == {"mode": "halt"}
        runs = await store.latest_runs()
        assert runs.source == "buffer" and runs.rows[0].outcome == "ok"
        incs = await store.open_incidents()
        assert incs.source == "buffer" and [i.dedupe_key for i in incs.rows] == ["stale:a"]

        pg_dedicated.start()
        assert await store.wait_drained(within_s=30)
        hbs = await store.heartbeats()
        assert hbs.source == "postgres"
        assert [h.ts for h in hbs.rows] == [later]
        assert store.database_reachable
        assert await stored_qtys(pg_dedicated.url(), "o1") == [1]
    finally:
        await store.close()


async def test_pending_rows_keep_later_writes_behind_them(
    ops_env: RuntimeEnv, pg_url: str, buffer: Buffer
) -> None:
    # Another process buffered seq 0..99 and nobody has drained yet (we hold the lock).
    await buffer.append(_event_ops("large", "o1", range(100)), "other")
    lock = DrainLock(buffer.path.with_name(buffer.path.name + ".drain.lock"))
    assert lock.try_acquire()
    store = await Store.open(ops_env, process="writer", buffer_path=buffer.path)
    try:
        # Postgres is up, yet this write must queue behind the pending rows.
        await store.write_many(_event_ops("large", "o1", range(100, 110)))
        assert (await store.buffer_status()).pending == 110
        assert await stored_qtys(pg_url, "o1") == []
        lock.release()
        assert await store.wait_drained(within_s=30)
        assert await stored_qtys(pg_url, "o1") == list(range(110))
        # Buffer empty again: writes go straight to Postgres.
        await store.write_many(_event_ops("large", "o1", range(110, 111)))
        assert (await store.buffer_status()).pending == 0
        assert await stored_qtys(pg_url, "o1") == list(range(111))
    finally:
        lock.release()
        await store.close()


async def test_crash_between_commit_and_delete_replays_once(
    ops_env: RuntimeEnv, pg_url: str, buffer: Buffer
) -> None:
    ops = _event_ops("large", "o1", range(500))
    ops += [Op("heartbeat", {"process": "p", "account": None, "role": "r", "pid": 1,
                             "ts": T0.isoformat(), "started_at": T0.isoformat(),
                             "counters": {}})]
    await buffer.append(ops, "crashed")
    # The crashed drainer committed the first 300 rows and died before deleting them.
    conn = await connect(pg_url)
    try:
        rows = await buffer.fetch(300)
        async with conn.transaction():
            await apply_ops(conn, [r.op() for r in rows])
    finally:
        await conn.close()
    store = await Store.open(ops_env, process="survivor", buffer_path=buffer.path,
                             config=StoreSettings(drain_batch=128))
    try:
        assert await store.wait_drained(within_s=30)
        assert store.replayed == 501
    finally:
        await store.close()
    assert await stored_qtys(pg_url, "o1") == list(range(500))


async def test_refused_row_is_quarantined_not_lost_or_blocking(
    ops_env: RuntimeEnv, pg_url: str, buffer: Buffer
) -> None:
    bad = Op("signal", {"idempotency_key": "k", "account": "large", "symbol": "AAPL",
                        "side": "sideways", "qty": "1", "order_type": "market",
                        "time_in_force": "day", "created_at": T0.isoformat()})
    await buffer.append([*_event_ops("large", "o1", range(3)), bad,
                         *_event_ops("large", "o1", range(3, 6))], "p")
    store = await Store.open(ops_env, process="drainer", buffer_path=buffer.path)
    try:
        assert await store.wait_drained(within_s=30)
        status = await store.buffer_status()
        assert (status.pending, status.dead) == (0, 1)
        ((seq, kind, error),) = await buffer.dead_rows()
        assert kind == "signal" and "CheckViolation" in error and seq == 4
    finally:
        await store.close()
    assert await stored_qtys(pg_url, "o1") == list(range(6))


async def test_a_signal_buffered_before_reduce_only_existed_replays_as_an_ordinary_one(
    ops_env: RuntimeEnv, pg_url: str, buffer: Buffer
) -> None:
    def signal(key: str, **extra: object) -> Op:
        return Op("signal", {"idempotency_key": key, "account": "large", "symbol": "AAPL",
                             "side": "sell", "qty": "1", "order_type": "market",
                             "time_in_force": "day", "created_at": T0.isoformat(), **extra})

    await buffer.append([signal("old"), signal("exit", reduce_only=True)], "p")
    store = await Store.open(ops_env, process="drainer", buffer_path=buffer.path)
    try:
        assert await store.wait_drained(within_s=30)
        assert (await store.buffer_status()).dead == 0
    finally:
        await store.close()
    conn = await connect(pg_url)
    try:
        rows = await conn.fetch("SELECT idempotency_key, reduce_only FROM signals "
                                "WHERE idempotency_key IN ('old', 'exit')")
    finally:
        await conn.close()
    assert {r["idempotency_key"]: r["reduce_only"] for r in rows} == {
        "old": False, "exit": True}


def test_naive_datetime_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="naive datetime 2026-01-01T00:00:00"):
        enc(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


async def test_unknown_kind_is_a_clear_error(pg_url: str) -> None:
    conn = await connect(pg_url)
    try:
        with pytest.raises(ValueError, match="unknown store op kind 'nope'"):
            await apply_ops(conn, [Op("nope", {})])
    finally:
        await conn.close()
    assert isinstance(conn, asyncpg.Connection)


async def test_store_opened_during_outage_buffers_then_catches_up(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path
) -> None:
    pg_dedicated.stop(mode="fast")
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, pg_dedicated.url())
    store = await Store.open(env, process="early-bird")
    try:
        n = await store.record_trade_updates("large", [trade_update("o1", i) for i in range(3)])
        assert n == 3
        assert not store.database_reachable
        assert (await store.buffer_status()).pending == 3
        await store.heartbeat(heartbeat("early-bird", T0))
        snap = await store.heartbeats()
        assert snap.source == "buffer" and [h.process for h in snap.rows] == ["early-bird"]
        pg_dedicated.start()
        assert await store.wait_drained(within_s=30)
    finally:
        await store.close()
    assert await stored_qtys(pg_dedicated.url(), "o1") == [0, 1, 2]


async def test_missing_schema_keeps_rows_pending_not_quarantined(
    pg_empty_url: str, tmp_path: Path, buffer: Buffer
) -> None:
    await buffer.append(_event_ops("large", "o1", range(5)), "p")
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, pg_empty_url)
    # A long poll keeps the background drainer asleep: this test drives drain_once itself.
    store = await Store.open(env, process="d", buffer_path=buffer.path,
                             config=StoreSettings(drain_poll_s=3600))
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await store.drain_once()
        status = await store.buffer_status()
        assert (status.pending, status.dead) == (5, 0)
        await migrate(pg_empty_url)
        assert await store.drain_once() == "drained"
        assert (await store.buffer_status()).pending == 0
    finally:
        await store.close()
    assert await stored_qtys(pg_empty_url, "o1") == list(range(5))


async def test_replay_stores_raw_verbatim_for_old_and_new_rows(
    ops_env: RuntimeEnv, pg_url: str, buffer: Buffer
) -> None:
    """Rows buffered before the raw event became text (an object) and after (the frame's
    text as received) replay in one batch; the text is kept byte for byte (type json)."""
    frame = '{"stream": "trade_updates", "data": {"z": 1, "a": [1.50, 2]}}'
    new = replace(trade_update("o1", 3), raw_json=frame)
    await buffer.append([*_event_ops("large", "o1", range(3)),
                         trade_update_op("large", new)], "p")
    store = await Store.open(ops_env, process="drainer", buffer_path=buffer.path)
    try:
        assert await store.wait_drained(within_s=30)
    finally:
        await store.close()
    conn = await connect(pg_url)
    try:
        raws = [r[0] for r in await conn.fetch(
            "SELECT raw::text FROM order_events WHERE order_id = 'o1' ORDER BY id")]
    finally:
        await conn.close()
    assert raws == ['{"seq":0}', '{"seq":1}', '{"seq":2}', frame]


def test_decode_ops_never_misaligns_damaged_rows() -> None:
    """A batch decodes as one array; a row that is not exactly one JSON object makes the
    batch decode row by row, so the damaged row fails as itself and no payload shifts."""
    def row(seq: int, text: str) -> PendingRow:
        return PendingRow(seq, "heartbeat", text, "p", 0.0)

    good = [row(1, '{"a":1}'), row(2, '{"b":2}')]
    assert [op.payload for op in decode_ops(good)] == [{"a": 1}, {"b": 2}]
    two_in_one = [row(1, '{"a":1},{"x":0}'), row(2, '{"b":2}')]
    with pytest.raises(ValueError, match="Extra data"):
        decode_ops(two_in_one)
    not_object = [row(1, "[1]"), row(2, '{"b":2}')]
    assert [op.payload for op in decode_ops(not_object)] == [[1], {"b": 2}]
    truncated = [row(1, '{"a":'), row(2, '{"b":2}')]
    with pytest.raises(ValueError):
        decode_ops(truncated)


async def test_unreadable_rows_are_quarantined_and_the_rest_replays(
    ops_env: RuntimeEnv, pg_url: str, buffer: Buffer
) -> None:
    """A row whose kind this version does not know, and a row whose JSON is damaged (a
    torn disk write, a hand edit), fail while the batch is decoded ahead of its turn:
    they are isolated and quarantined like rows Postgres refuses, never block the rest."""
    await buffer.append([*_event_ops("large", "o1", range(2)), Op("no_such_kind", {"x": 1}),
                         *_event_ops("large", "o1", range(2, 4))], "p")
    # A damaged payload, then good rows after it. (`with connect()` commits but does not
    # close: Python 3.13 warns about the open connection, an error under filterwarnings.)
    with closing(sqlite3.connect(buffer.path)) as raw_db, raw_db:
        raw_db.execute("INSERT INTO pending (kind, payload, process, created_at) "
                       "VALUES ('order_event', '{\"account\": \"large\", ', 'p', 0)")
    await buffer.append(_event_ops("large", "o1", range(4, 6)), "p")
    store = await Store.open(ops_env, process="drainer", buffer_path=buffer.path)
    try:
        assert await store.wait_drained(within_s=30)
        status = await store.buffer_status()
        assert (status.pending, status.dead) == (0, 2)
        dead = await buffer.dead_rows()
        assert [(seq, kind) for seq, kind, _ in dead] == [(3, "no_such_kind"), (6, "order_event")]
        assert "unknown store op kind" in dead[0][2] and "JSONDecodeError" in dead[1][2]
    finally:
        await store.close()
    assert await stored_qtys(pg_url, "o1") == list(range(6))
