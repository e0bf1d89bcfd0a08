"""Chaos: the outage buffer's disk fills up, on the real demo stack (issue 7.1, last bullet).

  OPS_CHAOS_REPORT=/tmp/chaos.jsonl .venv/bin/pytest tests/chaos/test_disk.py -s

The stack runs with its SQLite buffer (`[buffer] path`) on a small tmpfs of its own, so
the disk can be filled for real (a filler file takes every free byte) without touching the
rest of OPS_HOME (logs, alert outbox, embedded Postgres). Then, in order:
1. Postgres up, disk full: the watchdog's probe opens "buffer-unwritable" (seen by
   `ops status`); trading goes on (writes go to Postgres); room again -> it closes.
2. Postgres stopped, fills buffered; then the disk fills: writes are refused loudly
   ("STORAGE UNAVAILABLE" in the roles' logs: the stream keeps its events and retries),
   nothing crash-loops, every event buffered before stays in the buffer.
3. Postgres started, disk still full: the buffered events replay (undeletable, kept);
   then room again: the buffer drains, the incident closes, and `settle()` counts the
   fills (lost / duplicated / phantom), broker orders per signal and positions against
   the simulator's ledger; reported, then asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chaos.rig import ChaosRig, assert_held
from tests.e2e.conftest import make_home, tear_down, up_demo
from tests.store.disks import TmpfsDisk, free_bytes

pytestmark = pytest.mark.timeout(600)

BUFFER_MB = 64
KIND = "buffer-unwritable"
# Buffered kinds that carry an order event (natural key: account, event_key).
EVENT_KINDS = ("order_event", "trade_update")


def _buffer_on_its_own_disk(text: str) -> str:
    assert "\n[buffer]\n" in text
    return text.replace("\n[buffer]\n",
                        '\n[buffer]\npath = "${OPS_HOME}/buf/buffer.sqlite3"\n', 1)


@pytest.fixture(scope="module")
def disk_rig() -> Iterator[tuple[ChaosRig, TmpfsDisk]]:
    home, port, environ, env = make_home(_buffer_on_its_own_disk)
    disk = TmpfsDisk(BUFFER_MB, path=home / "buf")
    try:
        stack = up_demo(env, environ, port)
        assert stack.up.returncode == 0, stack.up.stdout + stack.up.stderr
        yield ChaosRig(stack), disk
    finally:
        try:
            disk.free()
            tear_down(env, environ)
        finally:
            disk.close()
            if not os.environ.get("OPS_TEST_KEEP_HOME"):  # the emptied mount point stays
                shutil.rmtree(home, ignore_errors=True)


def status(rig: ChaosRig) -> dict[str, Any]:
    out = rig.stack.ops("status", "--json", timeout=60)
    st: dict[str, Any] = json.loads(out.stdout)
    return st


def incident_open(rig: ChaosRig) -> bool:
    return any(i.get("kind") == KIND for i in status(rig)["incidents"])


def buffer_query(path: Path, sql: str) -> list[Any]:
    """Read the live buffer file directly (WAL readers never block its writers)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def checkpoint(path: Path) -> None:
    """Fold the WAL into the database and truncate it (what SQLite does on its own from
    time to time): the WAL then owns no spare room that a full disk would leave usable."""
    conn = sqlite3.connect(str(path), timeout=30)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def log_hits(rig: ChaosRig, marker: str) -> dict[str, int]:
    """Lines containing `marker` per log file of the stack."""
    hits: dict[str, int] = {}
    for f in sorted(rig.env.log_dir.glob("*.log")):
        n = sum(1 for line in f.read_text(errors="replace").splitlines() if marker in line)
        if n:
            hits[f.stem] = n
    return hits


def trading(rig: ChaosRig) -> bool:
    rows = rig.stack.query("SELECT account FROM order_events WHERE event IN "
                           "('fill', 'partial_fill') GROUP BY account")
    return {r["account"] for r in rows} >= {"large", "tiny"}


def watchdog_kills(rig: ChaosRig) -> dict[str, int]:
    """SIGKILLs the watchdog logged, per process."""
    kills: dict[str, int] = {}
    for line in (rig.env.log_dir / "watchdog.log").read_text(errors="replace").splitlines():
        if "watchdog: SIGKILL " in line:
            name = line.split("watchdog: SIGKILL ", 1)[1].split()[0].split(":")[-1]
            kills[name] = kills.get(name, 0) + 1
    return kills


def test_disk_full_buffer(disk_rig: tuple[ChaosRig, TmpfsDisk]) -> None:
    rig, disk = disk_rig
    poll = rig.stack.poll
    buf = disk.path / "buffer.sqlite3"
    rig.wait_all_running(60)
    poll("fills on both accounts", lambda: trading(rig), timeout_s=90)
    before = rig.truth()

    # 1. Postgres up, the buffer's disk full: an incident; trading goes on.
    t0 = time.monotonic()
    disk.fill()
    assert free_bytes(disk.path) == 0
    poll("buffer-unwritable incident opened", lambda: incident_open(rig), timeout_s=60)
    open_s = time.monotonic() - t0
    fills_full = rig.truth().fills_db
    poll("fills stored while the buffer disk is full",
         lambda: rig.truth().fills_db > fills_full, timeout_s=60)
    t0 = time.monotonic()
    disk.free()
    poll("buffer-unwritable incident closed", lambda: not incident_open(rig), timeout_s=60)
    close_s = time.monotonic() - t0

    # 2. Postgres down, fills buffered, then the disk fills: refused loudly, nothing lost.
    kills_before = watchdog_kills(rig)
    rig.sup.stop("postgres")
    t_down = time.monotonic()
    rig.place_orders(4, prefix="chaos-disk")
    poll("fills buffered during the outage", lambda: buffer_query(
        buf, f"SELECT count(*) FROM pending WHERE kind IN {EVENT_KINDS}")[0][0] >= 3,
        timeout_s=90)
    checkpoint(buf)
    disk.fill()
    t0 = time.monotonic()
    poll("a role refuses a write (stored nowhere)",
         lambda: log_hits(rig, "STORAGE UNAVAILABLE"), timeout_s=120)
    refused_s = time.monotonic() - t0
    poll("the watchdog raised buffer-unwritable",
         lambda: log_hits(rig, f"INCIDENT OPEN {KIND}"), timeout_s=60)
    # What the buffer held once nothing more could be written: it must all reach Postgres.
    held = buffer_query(buf, "SELECT kind, payload FROM pending ORDER BY seq")
    events = {json.loads(p)["event_key"]: json.loads(p)["account"]
              for k, p in held if k in EVENT_KINDS}
    runs = {json.loads(p)["slot_id"] for k, p in held if k == "run"}
    assert events and runs, f"buffered before the disk filled: {len(events)} events, " \
        f"{len(runs)} runs"
    time.sleep(10)  # hold the double fault: processes must stay up (checked below)
    states = {p.name: p.state for p in rig.sup.processes()}
    assert not {n: s for n, s in states.items() if s in ("FATAL", "BACKOFF", "EXITED")}, states
    refusing = log_hits(rig, "STORAGE UNAVAILABLE")
    unstored = log_hits(rig, "the incident cannot be stored either")

    # 3. Postgres back, the disk still full: the buffered events replay all the same.
    t0 = time.monotonic()
    rig.sup.start("postgres")
    down_s = time.monotonic() - t_down

    def replayed() -> bool:
        rows = rig.stack.query("SELECT account, event_key FROM order_events "
                               "WHERE event_key = ANY($1::text[])", list(events))
        return {r["event_key"]: r["account"] for r in rows} == events
    poll("events buffered before the disk filled replayed from the full disk", replayed,
         timeout_s=120)
    stored_runs = {r["slot_id"] for r in rig.stack.query(
        "SELECT slot_id FROM runs WHERE slot_id = ANY($1::text[])", sorted(runs))}
    assert stored_runs == runs, f"{len(runs - stored_runs)} buffered run records lost"
    replay_s = time.monotonic() - t0
    still_pending = buffer_query(buf, "SELECT count(*) FROM pending")[0][0]

    disk.free()

    def drained() -> bool:
        db = status(rig)["database"]
        return bool(db["reachable"] and not db["buffered_rows"])
    poll("buffer drained once the disk has room", drained, timeout_s=120)
    poll("buffer-unwritable incident closed", lambda: not incident_open(rig), timeout_s=60)
    rig.wait_all_running(90)
    t = rig.settle()
    rig.reopen()
    kills = {n: k - kills_before.get(n, 0) for n, k in watchdog_kills(rig).items()
             if k > kills_before.get(n, 0)}
    rig.report("disk-full", "buffer tmpfs filled with Postgres up; then Postgres stopped "
               f"for {down_s:.0f}s and the buffer disk filled during the outage; Postgres "
               "started with the disk still full; then room again",
               {"incident opened s": round(open_s, 1), "incident closed s": round(close_s, 1),
                "first refused write s": round(refused_s, 1),
                "processes refusing writes": len(refusing),
                "incident logged but not storable": bool(unstored),
                "events buffered before full": len(events),
                "run records buffered before full": len(runs),
                "replayed from full disk s (from postgres start)": round(replay_s, 1),
                "rows kept undeletable": still_pending,
                "watchdog kills": kills,
                "fills during the scenario": t.fills_sim - before.fills_sim, **t.counted()})
    assert t.fills_sim > before.fills_sim
    # While nothing can be stored every heartbeat goes stale at once: the watchdog must not
    # turn that into a restart storm (it holds its judgement until storage is back).
    assert all(k <= 1 for k in kills.values()), f"restart loop: {kills}"
    assert_held(t)
