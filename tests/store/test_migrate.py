"""Migrations: apply to an empty database, re-apply as a no-op, refuse edited files,
serialise concurrent migrators; `ops db migrate` on the embedded default with no config."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest

from ops.runtime.env import runtime_env
from ops.store import embedded
from ops.store.migrate import MigrationError, apply_migrations, load_migrations, migrate
from ops.store.postgres import connect

EXPECTED_TABLES = {
    "accounts", "account_state", "signals", "orders", "order_events", "positions",
    "position_syncs", "position_history", "runs", "heartbeats", "incidents", "applied_ops",
    "controls", "schema_migrations",
}


# Other parts of the project add migrations; these tests hold for whatever is bundled.
ALL = [m.name for m in load_migrations()]
LATEST = load_migrations()[-1].version


async def test_apply_to_empty_then_noop(pg_empty_url: str) -> None:
    assert ALL[0] == "0001_initial"
    first = await migrate(pg_empty_url)
    assert first.applied == ALL
    assert first.version == LATEST
    again = await migrate(pg_empty_url)
    assert again.applied == []
    assert again.version == LATEST
    conn = await connect(pg_empty_url)
    try:
        tables = {r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        views = {r["viewname"] for r in await conn.fetch(
            "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    finally:
        await conn.close()
    assert EXPECTED_TABLES <= tables
    assert "fills" in views
    assert sorted((r["version"], r["name"], r["checksum"]) for r in rows) == [
        (m.version, m.name, m.checksum) for m in load_migrations()]


async def test_changed_checksum_is_a_clear_error(pg_empty_url: str) -> None:
    await migrate(pg_empty_url)
    edited = [dataclasses.replace(m, sql=m.sql + "\n-- edited\n") for m in load_migrations()]
    conn = await connect(pg_empty_url)
    try:
        with pytest.raises(MigrationError, match=r"0001_initial\.sql was changed"):
            await apply_migrations(conn, edited)
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_once(pg_empty_url: str) -> None:
    results = await asyncio.gather(*(migrate(pg_empty_url) for _ in range(4)))
    applied = [r.applied for r in results]
    assert sorted(applied) == [[], [], [], ALL]


def _ops(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env["OPS_HOME"] = str(home)
    ops_bin = Path(sys.executable).with_name("ops")
    return subprocess.run(
        [str(ops_bin), *args], env=env, capture_output=True, text=True, timeout=90,
        cwd=home,
    )


def test_ops_db_migrate_embedded_default(pg_home: Path) -> None:
    home = pg_home / "home"
    home.mkdir()
    env = runtime_env({"OPS_HOME": str(home)})
    try:
        first = _ops(home, "db", "migrate")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines() == [f"applied {name}" for name in ALL]
        second = _ops(home, "db", "migrate")
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip() == f"schema up to date (version {LATEST})"
        assert embedded.for_env(env).is_running()
        assert (home / "pg" / "data" / "PG_VERSION").exists()
    finally:
        embedded.stop(env)
    assert not embedded.for_env(env).is_running()


@pytest.mark.integration
def test_ops_db_migrate_unreachable_exits_2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env["OPS_HOME"] = str(tmp_path)
    env["OPS_DATABASE_URL"] = f"postgresql://ops:hunter2@/ops?host={tmp_path}/nowhere"
    ops_bin = Path(sys.executable).with_name("ops")
    out = subprocess.run([str(ops_bin), "db", "migrate"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "database unreachable" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout


async def test_fill_identity_removes_duplicates_keeping_the_first(pg_empty_url: str) -> None:
    """0013 on a database in use: the same fill stored twice (the stream's event and the
    REST backfill's copy under another key) keeps the first-stored row; the count is
    reported; from then on the database refuses a second copy of an identity."""
    before = [m for m in load_migrations() if m.version < 13]
    conn = await connect(pg_empty_url)
    try:
        await apply_migrations(conn, before)
        insert = ("INSERT INTO order_events (account, event_key, order_id, event, ts, raw)"
                  " VALUES ('large', $1, $2, $3, now(), $4::text::json)")
        stream = '{"stream":"trade_updates","data":{"order":{"filled_qty":"%s"}}}'
        backfill = '{"source":"rest-backfill","activity":{"cum_qty":"%s"}}'
        rows = [("exec:a", "o1", "partial_fill", stream % "4"),
                ("exec:b", "o1", "fill", stream % "10"),
                ("exec:zz", "o1", "partial_fill", backfill % "4"),  # the same fill again
                ("exec:c", "o2", "fill", backfill % "3"),
                ("exec:d", "o2", "fill", stream % "3"),  # again, the other way round
                ("exec:e", "o3", "fill", stream % "junk"),  # unreadable: kept, unidentified
                ("o1:new:t", "o1", "new", "{}")]
        for r in rows:
            await conn.execute(insert, *r)
        ids = {r["event_key"]: r["id"] for r in await conn.fetch(
            "SELECT id, event_key FROM order_events")}
        result = await apply_migrations(conn)
        assert result.notes == ["0013_fill_identity: fill identity: 6 fill row(s) checked, "
                                "2 duplicate(s) removed (the first-stored copy of each fill "
                                "kept)"]
        kept = {r["event_key"]: (r["id"], r["cum_qty"]) for r in await conn.fetch(
            "SELECT id, event_key, cum_qty FROM order_events")}
        assert set(kept) == {"exec:a", "exec:b", "exec:c", "exec:e", "o1:new:t"}
        assert all(kept[k][0] == ids[k] for k in kept)
        assert kept["exec:a"][1] == 4 and kept["exec:e"][1] is None
        assert await conn.fetchval("SELECT count(*) FROM fills") == 3
        with pytest.raises(asyncpg.UniqueViolationError, match="order_events_fill_uq"):
            await conn.execute("INSERT INTO order_events (account, event_key, order_id, event,"
                               " ts, cum_qty) VALUES ('large', 'other', 'o1', 'fill', now(),"
                               " 10.000)")
    finally:
        await conn.close()
