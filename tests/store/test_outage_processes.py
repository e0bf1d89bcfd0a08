"""Invariants 1 and 4 with real processes: several writers, Postgres stopped mid-stream and
restarted, one writer SIGKILLed while the buffer is being replayed. Afterwards every
record is in Postgres exactly once and each order's events are stored in the order written.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ops.store.embedded import EmbeddedPostgres
from ops.store.postgres import connect
from tests.support import eventually_sync

REPO = Path(__file__).resolve().parents[2]
ENTITIES = 4

pytestmark = pytest.mark.system


def while_writing(procs: dict[str, subprocess.Popen[str]],
                  cond: Callable[[], bool]) -> Callable[[], bool]:
    """`cond` as a poll predicate that fails at once when a writer has exited (the
    condition would then never come true)."""
    def check() -> bool:
        if cond():
            return True
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise AssertionError(f"writer {name} exited {proc.returncode}: "
                                     f"{proc.stderr.read() if proc.stderr else ''}")
        return False

    return check


def pending_rows(buffer: Path) -> int:
    if not buffer.exists():
        return 0
    con = sqlite3.connect(buffer, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM pending").fetchone()[0])
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        con.close()


def drain_lock_holder(buffer: Path) -> int | None:
    """The pid holding the drain lock right now, or None if nobody holds it."""
    path = buffer.with_name(buffer.name + ".drain.lock")
    if not path.exists():
        return None
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            text = fh.read().strip()
            return int(text) if text else None
        fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return None


async def _query(url: str, sql: str) -> list[tuple[object, ...]]:
    conn = await connect(url, connect_timeout=2)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def events_per_writer(url: str) -> dict[str, int]:
    try:
        rows = asyncio.run(_query(url, "SELECT raw->>'writer', count(*) FROM order_events "
                                       "GROUP BY 1"))
    except (OSError, TimeoutError):
        return {}
    return {str(w): int(str(n)) for w, n in rows}


def start_writers(url: str, buffer: Path, names: list[str], count: int,
                  **opts: str) -> dict[str, subprocess.Popen[str]]:
    procs = {}
    for name in names:
        cmd = [sys.executable, "-m", "tests.store.writer", "--url", url, "--buffer",
               str(buffer), "--name", name, "--count", str(count),
               "--entities", str(ENTITIES)]
        for k, v in opts.items():
            cmd += [f"--{k.replace('_', '-')}", v]
        procs[name] = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
    return procs


@pytest.fixture
def writers() -> Iterator[list[dict[str, subprocess.Popen[str]]]]:
    """Kills any writer a failing test left behind and closes every pipe."""
    groups: list[dict[str, subprocess.Popen[str]]] = []
    yield groups
    for group in groups:
        for proc in group.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def verify(url: str, buffer: Path, expected: dict[str, int | None]) -> None:
    """Each writer's records exactly once, in order; None = killed (a prefix is stored)."""
    rows = asyncio.run(_query(url, """
        SELECT raw->>'writer', order_id, (raw->>'seq')::int, (raw->>'i')::int, id
        FROM order_events ORDER BY id"""))
    seen: dict[str, list[int]] = defaultdict(list)
    per_entity: dict[str, list[int]] = defaultdict(list)
    for writer, order_id, seq, i, _ in rows:
        seen[str(writer)].append(int(str(i)))
        per_entity[str(order_id)].append(int(str(seq)))
    for name, count in expected.items():
        stored = sorted(seen[name])
        assert len(stored) == len(set(stored)), f"{name}: duplicate records"
        if count is None:
            assert stored == list(range(len(stored))), f"{name}: gap in a killed writer's data"
        else:
            assert stored == list(range(count)), f"{name}: {len(stored)} of {count} stored"
    for order_id, seqs in per_entity.items():
        assert seqs == sorted(seqs), f"{order_id}: events stored out of order"
    runs = {str(p): int(str(n)) for p, n in
            asyncio.run(_query(url, "SELECT process, count(*) FROM runs GROUP BY 1"))}
    hbs = {r[0] for r in asyncio.run(_query(url, "SELECT process FROM heartbeats"))}
    for name, count in expected.items():
        if count is not None:
            assert runs[name] == (count + 49) // 50
            assert name in hbs
    assert pending_rows(buffer) == 0


def test_outage_mid_stream_every_record_once_in_order(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path,
    writers: list[dict[str, subprocess.Popen[str]]],
) -> None:
    url, buffer, count = pg_dedicated.url(), tmp_path / "buffer.sqlite3", 1500
    names = ["w1", "w2", "w3"]
    procs = start_writers(url, buffer, names, count, pace_ms="1")
    writers.append(procs)

    eventually_sync(while_writing(procs, lambda: all(events_per_writer(url).get(n, 0) >= 150
                                                     for n in names)),
                    "every writer to store 150 events directly")
    pg_dedicated.stop(mode="fast")
    eventually_sync(while_writing(procs, lambda: pending_rows(buffer) > 600),
                    "600 buffered rows during the outage")
    assert all(p.poll() is None for p in procs.values()), "writers finished before restart"
    pg_dedicated.start()

    for name, proc in procs.items():
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, f"{name} exited {proc.returncode}: {err[-2000:]}"
        assert f"{name} wrote {count}" in out
    verify(url, buffer, dict.fromkeys(names, count))


def test_writer_killed_during_replay_still_exactly_once(
    pg_dedicated: EmbeddedPostgres, tmp_path: Path,
    writers: list[dict[str, subprocess.Popen[str]]],
) -> None:
    url, buffer, count = pg_dedicated.url(), tmp_path / "buffer.sqlite3", 2000
    names = ["k1", "k2", "k3"]
    # Small replay batches so the replay takes many transactions and can be interrupted.
    procs = start_writers(url, buffer, names, count, pace_ms="0.5", drain_batch="25")
    writers.append(procs)

    eventually_sync(while_writing(procs, lambda: all(events_per_writer(url).get(n, 0) >= 100
                                                     for n in names)),
                    "every writer to store 100 events directly")
    pg_dedicated.stop(mode="fast")
    eventually_sync(while_writing(procs, lambda: pending_rows(buffer) > 1500),
                    "1500 buffered rows during the outage")
    before = sum(events_per_writer_when_up(pg_dedicated, url).values())

    pids = {p.pid: n for n, p in procs.items()}
    victim: list[str] = []

    def replay_in_progress_then_kill() -> bool:
        holder = drain_lock_holder(buffer)
        if holder not in pids or procs[pids[holder]].poll() is not None:
            return False
        if sum(events_per_writer(url).values()) <= before or pending_rows(buffer) == 0:
            return False
        os.kill(holder, signal.SIGKILL)
        victim.append(pids[holder])
        return True

    eventually_sync(replay_in_progress_then_kill, "a writer to be replaying the buffer")
    assert pending_rows(buffer) > 0, "replay finished before the kill"
    killed = victim[0]
    procs[killed].wait(timeout=30)
    assert procs[killed].returncode == -signal.SIGKILL

    for name, proc in procs.items():
        if name == killed:
            continue
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, f"{name} exited {proc.returncode}: {err[-2000:]}"
    expected: dict[str, int | None] = {n: (None if n == killed else count) for n in names}
    verify(url, buffer, expected)


def events_per_writer_when_up(server: EmbeddedPostgres, url: str) -> dict[str, int]:
    """Restart the server, then count what is stored before any replay could commit."""
    server.start()
    return events_per_writer(url)
