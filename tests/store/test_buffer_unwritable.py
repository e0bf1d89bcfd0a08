"""The outage buffer on a full or read-only disk, with real file systems and real Postgres.

(a) Postgres up: writes go on; `probe_buffer()` and `BufferWatch` raise the
    "buffer-unwritable" incident, and close it when the disk has room again.
(b) Postgres down too: a write is stored nowhere, so it raises `StorageUnavailable` (an
    outage to `is_outage`: the writer keeps it), loudly; nothing accepted before is lost.
(c) Rows buffered before the disk filled replay into Postgres once it is back, although
    they cannot be deleted; writes then go to Postgres without overtaking them; replaying
    them again is harmless; once the disk has room they are deleted, each stored once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ops.core.backoff import Backoff
from ops.runtime.env import RuntimeEnv
from ops.store import Op, Store, StoreSettings
from ops.store.bufferwatch import KIND, BufferWatch
from ops.store.embedded import EmbeddedPostgres
from ops.store.errors import StorageUnavailable
from ops.store.postgres import connect, is_outage
from tests.store.disks import Ext4Disk, TmpfsDisk, free_bytes
from tests.store.factories import T0
from tests.store.reads import stored_qtys
from tests.support import eventually

SETTINGS = StoreSettings(
    drain_poll_s=0.05, connect_timeout_s=1.0, command_timeout_s=5.0,
    drain_backoff=Backoff(initial_s=0.05, max_s=0.2, max_attempts=0, deadline_s=None),
)


def events(seqs: range | list[int], order_id: str = "o1") -> list[Op]:
    """One order event per seq (natural key order_id:seq; qty = seq, to read back)."""
    return [Op("order_event", {
        "account": "large", "event_key": f"{order_id}:{i}", "order_id": order_id,
        "client_order_id": None, "symbol": "AAPL", "event": "fill",
        "ts": (T0 + timedelta(milliseconds=i)).isoformat(), "execution_id": None,
        "price": "1.5", "qty": str(i), "position_qty": None, "raw": {"seq": i, "pad": "x" * 600},
    }) for i in seqs]



@pytest.fixture
def disk() -> Iterator[TmpfsDisk]:
    d = TmpfsDisk(size_mb=8)
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
def ext4() -> Iterator[Ext4Disk]:
    d = Ext4Disk()
    try:
        yield d
    finally:
        d.close()


@pytest.fixture
async def dedicated_store(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path, disk: TmpfsDisk
) -> AsyncIterator[Store]:
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, pg_dedicated.url())
    store = await Store.open(env, process="large-stream", config=SETTINGS,
                             buffer_path=disk.path / "buffer.sqlite3")
    try:
        yield store
    finally:
        await store.close()


async def fill_until_refused(store: Store, first: int, limit: int = 5000) -> tuple[
        list[int], StorageUnavailable]:
    """Write events from `first` on until the store refuses one; (accepted seqs, error)."""
    accepted: list[int] = []
    for i in range(first, first + limit):
        try:
            await store.write_many(events([i]))
        except StorageUnavailable as exc:
            return accepted, exc
        accepted.append(i)
    raise AssertionError(f"{limit} writes accepted on a full disk during an outage")


# --- (a) Postgres up --------------------------------------------------------------------------


async def test_full_disk_postgres_up_writes_go_on_and_the_probe_says_so(
    ops_env: RuntimeEnv, pg_url: str, disk: TmpfsDisk
) -> None:
    store = await Store.open(ops_env, process="t", config=SETTINGS,
                             buffer_path=disk.path / "buffer.sqlite3")
    try:
        assert await store.probe_buffer() is None
        disk.fill()
        assert free_bytes(disk.path) == 0
        problem = await store.probe_buffer()
        assert problem is not None
        assert str(disk.path / "buffer.sqlite3") in problem and "No space left" in problem
        # Writes and their latest-state mirrors go on: Postgres takes them.
        for i in range(300):
            assert await store.write_many(events([i])) == 1
        assert await stored_qtys(pg_url) == list(range(300))
        assert (await store.buffer_status()).pending == 0
        disk.free()
        assert await store.probe_buffer() is None
    finally:
        await store.close()


async def test_buffer_watch_opens_and_closes_the_incident(
    ops_env: RuntimeEnv, disk: TmpfsDisk
) -> None:
    store = await Store.open(ops_env, process="watchdog", config=SETTINGS,
                             buffer_path=disk.path / "buffer.sqlite3")
    try:
        watch = BufferWatch(store, host="h1", interval_s=0)
        assert await watch.check() is None  # writable, nothing open
        disk.fill()
        change = await watch.check()
        assert change is not None and change.event == "opened" and change.stored
        assert "No space left" in change.detail
        assert await watch.check() is None  # still open: no second incident
        incs = (await store.open_incidents()).rows
        assert [(i.kind, i.dedupe_key) for i in incs] == [(KIND, "buffer-unwritable:h1")]

        # A restarted watchdog (a new BufferWatch) finds it open and closes it when due.
        disk.free()
        again = BufferWatch(store, host="h1", interval_s=0)
        change = await again.check()
        assert change is not None and change.event == "closed" and change.stored
        assert (await store.open_incidents()).rows == []
    finally:
        await store.close()


# --- (b) and (c): Postgres down, then the disk fills ------------------------------------------


async def test_outage_on_a_full_disk_refuses_loudly_then_replays_everything_once(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path, disk: TmpfsDisk,
    dedicated_store: Store, caplog: pytest.LogCaptureFixture,
) -> None:
    store, url = dedicated_store, pg_dedicated.url()
    pg_dedicated.stop(mode="fast")
    await store.write_many(events(range(50)))  # buffered while the disk had room
    assert (await store.buffer_status()).pending == 50

    disk.fill()
    with caplog.at_level(logging.ERROR, logger="ops.store.store"):
        accepted, exc = await fill_until_refused(store, 50)
        # (b) the writer sees an error that callers treat as an outage (keep and retry),
        # naming the buffer file and why; the log says it plainly.
        assert is_outage(exc)
        assert str(disk.path / "buffer.sqlite3") in str(exc) and "SQLITE_FULL" in str(exc)
        assert "STORAGE UNAVAILABLE" in caplog.text
        with pytest.raises(StorageUnavailable):
            await store.write_many(events([9999]))
    assert store.refused >= 2 and store.refused_within(60.0)  # the watchdog asks this
    # Whatever was accepted is in the buffer (reads work on a full disk).
    buffered = list(range(50)) + accepted
    assert (await store.buffer_status()).pending == len(buffered)

    # (c) Postgres returns, the disk is still full: everything replays, nothing deletable.
    pg_dedicated.start()

    async def replayed() -> bool:
        return await stored_qtys(url) == buffered
    await eventually(replayed, "buffered rows replayed", timeout_s=30)
    assert (await store.buffer_status()).pending == len(buffered)  # kept: undeletable
    conn = await connect(url)
    try:
        mark = await conn.fetchval("SELECT through_seq FROM buffer_replay")
    finally:
        await conn.close()
    assert mark == await store.buffer.last_seq()

    # Postgres holds every buffered row: writes skip the full buffer, in order, and so do
    # another process's (it learns how far replay got from Postgres, not from memory).
    await store.write_many(events([10_000]))
    other = await Store.open(RuntimeEnv(tmp_path / "ops.toml", tmp_path, url),
                             process="large-dispatcher", config=SETTINGS,
                             buffer_path=store.buffer.path)
    try:
        await other.write_many(events([10_001]))
    finally:
        await other.close()
    assert await stored_qtys(url) == buffered + [10_000, 10_001]

    # Replaying all of it again (the mark lost, say) changes nothing: natural keys.
    conn = await connect(url)
    try:
        await conn.execute("DELETE FROM buffer_replay")
    finally:
        await conn.close()
    store._replayed_through = 0  # forget what this process knew, too
    assert await store.drain_once() in ("drained", "busy")
    await eventually(lambda: _marked(url), "replayed again", timeout_s=30)
    assert await stored_qtys(url) == buffered + [10_000, 10_001]

    # Room again: the replayed rows are deleted; each event is stored once.
    disk.free()
    assert await store.wait_drained(within_s=30)
    assert await stored_qtys(url) == buffered + [10_000, 10_001]
    assert await store.probe_buffer() is None


async def _marked(url: str) -> bool:
    conn = await connect(url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM buffer_replay") == 1)
    finally:
        await conn.close()


async def test_buffer_watch_when_the_incident_cannot_be_stored(
    pg_dedicated: EmbeddedPostgres, disk: TmpfsDisk, dedicated_store: Store,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = dedicated_store
    watch = BufferWatch(store, host="h1", interval_s=0)
    assert await watch.check() is None
    pg_dedicated.stop(mode="fast")
    disk.fill()
    await fill_until_refused(store, 0)  # the WAL's spare room used up too
    with caplog.at_level(logging.ERROR, logger="ops.store.bufferwatch"):
        change = await watch.check()
    assert change is not None and change.event == "opened" and not change.stored
    assert "cannot be stored either" in caplog.text
    # Postgres back, disk still full: the incident is recorded on the next probe.
    pg_dedicated.start()

    async def recorded() -> bool:
        await watch.check()
        rows = (await store.open_incidents()).rows
        return [i.kind for i in rows] == [KIND]
    await eventually(recorded, "incident recorded once Postgres is back", timeout_s=30)
    disk.free()
    change = await watch.check()
    assert change is not None and change.event == "closed" and change.stored
    assert await store.wait_drained(within_s=30)
    assert (await store.open_incidents()).rows == []


# --- read-only: ext4 turned read-only by the kernel under the open buffer ----------------------


async def test_read_only_buffer_refuses_during_outage_and_replays_after(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path, ext4: Ext4Disk
) -> None:
    url = pg_dedicated.url()
    store = await Store.open(RuntimeEnv(tmp_path / "ops.toml", tmp_path, url),
                             process="large-stream", config=SETTINGS,
                             buffer_path=ext4.path / "buffer.sqlite3")
    try:
        pg_dedicated.stop(mode="fast")
        await store.write_many(events(range(20)))
        ext4.break_()
        with pytest.raises(StorageUnavailable) as refused:
            await store.write_many(events([20]))
        assert "not writable" in str(refused.value) and "SQLITE_IOERR" in str(refused.value)
        problem = await store.probe_buffer()
        assert problem is not None and "Read-only file system" in problem
        assert (await store.buffer_status()).pending == 20

        pg_dedicated.start()

        async def replayed() -> bool:
            return await stored_qtys(url) == list(range(20))
        await eventually(replayed, "rows replayed from a read-only buffer", timeout_s=30)
        await store.write_many(events([20]))  # Postgres holds them all: straight there
        assert await stored_qtys(url) == list(range(21))
    finally:
        await store.close()


# --- a process starting while the disk is already full ----------------------------------------


async def test_a_process_starts_on_a_full_disk_and_reopens_the_buffer_later(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path, disk: TmpfsDisk
) -> None:
    url, path = pg_dedicated.url(), disk.path / "buffer.sqlite3"
    env = RuntimeEnv(tmp_path / "ops.toml", tmp_path, url)
    pg_dedicated.stop(mode="fast")
    earlier = await Store.open(env, process="large-stream", config=SETTINGS, buffer_path=path)
    await earlier.write_many(events(range(10)))  # left pending by an earlier run
    await earlier.close()
    disk.fill()
    # Nobody holds the buffer open, so SQLite cannot even create its shared-memory file:
    # a normal open fails. The process starts all the same, with the buffer read-only.
    store = await Store.open(env, process="large-stream", config=SETTINGS, buffer_path=path)
    try:
        assert store.buffer.read_only is not None and "SQLITE_IOERR" in store.buffer.read_only
        assert (await store.buffer_status()).pending == 10
        assert await store.probe_buffer() is not None
        with pytest.raises(StorageUnavailable):
            await store.write_many(events([10]))

        pg_dedicated.start()

        async def replayed() -> bool:
            return await stored_qtys(url) == list(range(10))
        await eventually(replayed, "rows replayed from the read-only buffer", timeout_s=30)
        await store.write_many(events([10]))
        disk.free()
        assert await store.probe_buffer() is None  # reopened normally
        assert store.buffer.read_only is None
        assert await store.wait_drained(within_s=30)
        pg_dedicated.stop(mode="fast")
        await store.write_many(events([11]))  # an outage is buffered again
        assert (await store.buffer_status()).pending == 1
        pg_dedicated.start()
        assert await store.wait_drained(within_s=30)
        assert await stored_qtys(url) == list(range(12))
    finally:
        await store.close()


async def test_replay_works_on_a_database_without_the_mark_table(
    ops_env: RuntimeEnv, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # New code on a database `ops db migrate` has not reached yet (`ops run` does not
    # migrate): replay goes on as before, without the mark, and says what to run.
    from ops.store.buffer import Buffer

    conn = await connect(pg_url)
    try:
        await conn.execute("DROP TABLE buffer_replay")
    finally:
        await conn.close()
    path = tmp_path / "buffer.sqlite3"
    buf = await Buffer.open(path)
    await buf.append(events(range(5)), "earlier")
    await buf.close()
    with caplog.at_level(logging.WARNING, logger="ops.store.store"):
        store = await Store.open(ops_env, process="t", config=SETTINGS, buffer_path=path)
        try:
            assert await store.wait_drained(within_s=30)
        finally:
            await store.close()
    assert await stored_qtys(pg_url) == list(range(5))
    assert "ops db migrate" in caplog.text
