"""`Store`: the one API for every write that must survive, and the reads roles need.

Writes are `Op`s (ops/store/ops.py). `write_many` applies them to Postgres in one
transaction; when Postgres is away (`is_outage`) they go to the SQLite buffer instead.
Ordering rule: while the buffer holds pending rows (from any process on the host), new
writes go to the buffer too, so a later write never overtakes an earlier buffered one.

A drainer task runs in every process that opens a Store; an exclusive `flock` on
`<buffer>.drain.lock` makes exactly one of them replay at a time (the kernel releases it if
that process dies). It replays pending rows in seq order, a batch per Postgres
transaction, and deletes them from SQLite after the commit. A crash between commit and
delete replays the batch again, which the natural keys turn into a no-op: exactly once.

Full or read-only disk (the buffer raises `BufferUnwritable`):
- Postgres up, nothing pending: writes go to Postgres as always; `probe_buffer()` (run by
  the watchdog, see ops/store/bufferwatch.py) tells that the safety net is gone.
- Postgres down: the write is stored nowhere, so it raises `StorageUnavailable` (the
  outage type callers catch: they keep the write and retry) and the process logs it loudly.
- Rows pending: the drainer still replays them (reading works on a full disk) and records
  how far in `buffer_replay` (Postgres, same transaction as the batch), because it may be
  unable to delete them. Once every pending row is in Postgres, writes skip the buffer;
  the replayed rows are deleted when the disk has room again.

Reads come from Postgres; during an outage they come from the buffer's latest-state table
and say so (`Snapshot.source == "buffer"`); while replay is still catching up the two are
merged, newest timestamp per entity winning (`"postgres+buffer"`).

What has no buffered copy (claiming signals, exit states, an incident in full, the
history panes) is read and written through `direct(query, ...)` with a query function of
ops/store (signals.py, positions.py, incidents.py, ...): Postgres only, and an outage
raises `StorageUnavailable`. Nothing outside ops/store touches the pool or classifies a
driver error.

Where the parts live: this module is the facade (opening and closing, the write path,
the typed writes); `Store` is put together from `StoreCore` (ops/store/core.py: settings,
state, notes on Postgres and the buffer), `Replay` (replay.py: the drainer) and `Reads`
(reads.py); the payload codec (read models, ops from domain types, decoders) is
codec.py. Every name this module exported before still imports from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.config import Config
from ops.core.models import AccountInfo, Heartbeat, Order, Position, RunRecord, TradeUpdate
from ops.runtime.env import RuntimeEnv
from ops.store import embedded
from ops.store.buffer import Buffer
from ops.store.codec import (
    AccountState,
    Control,
    Incident,
    StoredPosition,
    decode_run,
    order_op,
    position_payload,
    run_payload,
    trade_update_op,
    utcnow,
)
from ops.store.core import StoreSettings
from ops.store.errors import BufferUnwritable, StorageUnavailable
from ops.store.ops import Op, enc, latest_entries, new_op_id, plan, run_steps
from ops.store.postgres import close_pool, create_pool, is_outage
from ops.store.reads import Reads, Snapshot
from ops.store.replay import DrainLock, Replay

log = logging.getLogger(__name__)


class Store(Reads, Replay):
    """Open with `await Store.open(env, process=...)`; close with `await store.close()`."""

    def __init__(
        self,
        *,
        url: str,
        buffer: Buffer,
        pool: asyncpg.Pool,
        process: str,
        settings: StoreSettings,
    ):
        self.url = url
        self.process = process
        self.settings = settings
        self._buffer = buffer
        self._pool = pool
        self._lock = DrainLock(buffer.path.with_name(buffer.path.name + ".drain.lock"),
                               fallback=buffer.path)
        self._reachable = True
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._draining = asyncio.Lock()
        self._drainer: asyncio.Task[None] | None = None
        self._closed = False
        self.replayed = 0  # rows this process replayed (a progress counter for heartbeats)
        self.refused = 0  # writes stored nowhere (StorageUnavailable raised)
        self._refused_at: float | None = None  # loop time of the last one
        self._refused_logged_at: float | None = None
        self._unwritable: str | None = None  # the buffer's last write error, None when fine
        # Highest seq this process replayed whose rows the buffer could not delete yet.
        self._replayed_through = 0
        self._pg_retry_at = 0.0  # loop time; see _write_unbuffered
        self._reopen_at = 0.0  # loop time; see _reopen_if_read_only
        self._retired: list[Buffer] = []  # read-only buffers replaced by a writable one
        self._mark_table = False  # see _has_marks
        self._mark_warned = False

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        env: RuntimeEnv,
        *,
        process: str,
        config: Config | StoreSettings | None = None,
        url: str | None = None,
        buffer_path: Path | None = None,
        start_embedded: bool = False,
    ) -> Store:
        """Open the pool (lazily: works during an outage), the buffer, and the drainer.

        `config` is the loaded `ops.toml` (its [database] and [buffer] tables) or explicit
        StoreSettings. The URL is `url`, else OPS_DATABASE_URL, else the embedded server's
        (started only when `start_embedded`: under supervisord, postgres is its own program).
        """
        if isinstance(config, Config):
            settings = StoreSettings.from_config(config, env)
        else:
            settings = config or StoreSettings()
        buffer_path = buffer_path or settings.buffer_path or env.buffer_path
        if url is None:
            if start_embedded:
                url = await asyncio.to_thread(embedded.database_url, env)
            else:
                url = embedded.database_url(env, start=False)
        # degrade: on a full/read-only disk the process still starts (writes go to Postgres
        # while it is up); the buffer is reopened normally once that works.
        buffer = await Buffer.open(buffer_path, degrade=True)
        try:
            pool = await create_pool(
                url,
                max_size=settings.pool_max_size,
                connect_timeout=settings.connect_timeout_s,
                command_timeout=settings.command_timeout_s,
            )
        except BaseException:
            await buffer.close()
            raise
        store = cls(url=url, buffer=buffer, pool=pool, process=process, settings=settings)
        store._drainer = asyncio.create_task(store._drain_loop(), name=f"store-drainer-{process}")
        return store

    async def close(self) -> None:
        """Stop the drainer (an in-flight batch gets `close_grace_s`), close pool and buffer."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake.set()
        if self._drainer is not None:
            done, _ = await asyncio.wait({self._drainer}, timeout=self.settings.close_grace_s)
            if not done:
                self._drainer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._drainer
        self._lock.release()
        await close_pool(self._pool)
        for old in self._retired:
            await old.close()
        await self._buffer.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the write path ---------------------------------------------------------------------

    async def write(self, op: Op) -> int:
        return await self.write_many([op])

    async def write_many(self, ops: Sequence[Op]) -> int:
        """Apply ops in one Postgres transaction, or buffer them all during an outage.

        Returns the rows newly stored/changed in Postgres, or len(ops) when buffered
        (duplicates among buffered rows are dropped at replay).
        """
        if not ops:
            return 0
        latest = latest_entries(ops)
        if not await self._buffer.has_pending():
            try:
                async with self._pool.acquire() as conn:
                    n = await _apply_atomically(conn, ops)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._note_outage(exc)
            else:
                self._reachable = True
                await self._mirror(latest)
                return n
        try:
            await self._buffer.append(ops, self.process, latest)
        except BufferUnwritable as exc:
            self._note_unwritable(exc)
            return await self._write_unbuffered(ops, exc)
        self._note_writable()
        self._wake.set()
        return len(ops)

    async def _write_unbuffered(self, ops: Sequence[Op], why: BufferUnwritable) -> int:
        """The buffer refused `ops`. Postgres may take them only if it is reachable and
        already holds every pending row (else a later write would overtake an earlier one).
        Otherwise they are stored nowhere: raise, so the caller keeps and retries them."""
        loop = asyncio.get_running_loop()
        reason = "Postgres unreachable"
        # `_reachable` may be stale (nothing read or replayed since Postgres returned), so
        # ask Postgres again, though at most every pg_retry_s while it stays away.
        if self._reachable or loop.time() >= self._pg_retry_at:
            self._pg_retry_at = loop.time() + self.settings.pg_retry_s
            try:
                deadline = loop.time() + self.settings.catch_up_wait_s
                while not await self._caught_up():
                    # Replay now rather than wait for the drainer's back-off; "busy":
                    # another process replays, so wait for its mark.
                    try:
                        outcome = await self.drain_once()
                    except Exception as exc:
                        if is_outage(exc):
                            raise
                        # Not this write's fault (the drainer logs and retries it): the
                        # write must read as "not stored yet", never as a bad row.
                        log.warning("replay from the write path failed (%s: %s)",
                                    type(exc).__name__, exc)
                        break
                    if outcome == "outage" or loop.time() >= deadline:
                        break
                    if outcome == "busy":
                        await asyncio.sleep(0.05)
                else:
                    async with self._pool.acquire() as conn:
                        n = await _apply_atomically(conn, ops)
                    self._reachable = True
                    return n
                reason = ("Postgres does not hold every buffered row yet" if self._reachable
                          else "Postgres unreachable")
            except Exception as exc:
                if not is_outage(exc):
                    raise
                self._note_outage(exc)
                reason = f"Postgres unreachable ({type(exc).__name__}: {exc})"
        self.refused += 1
        loop_now = self._refused_at = loop.time()
        if (self._refused_logged_at is None
                or loop_now - self._refused_logged_at >= self.settings.refused_log_every_s):
            self._refused_logged_at = loop_now
            log.error("STORAGE UNAVAILABLE: %d write(s) of %s stored nowhere so far (%s, and "
                      "%s); the writer keeps them and retries", self.refused,
                      ", ".join(sorted({op.kind for op in ops})), reason, why)
        raise StorageUnavailable(
            f"{len(ops)} write(s) ({', '.join(sorted({op.kind for op in ops}))}) not stored: "
            f"{reason}, and {why}") from None  # the message says it all; no chain

    async def _mirror(self, latest: Sequence[Any]) -> None:
        """Keep the buffer's latest-state current so outage reads start from fresh data."""
        if not latest:
            return
        try:
            await self._buffer.put_latest(latest)
        except BufferUnwritable as exc:
            # The write itself succeeded; a stale mirror is not data loss. Said once.
            self._note_unwritable(exc)
        except Exception:  # the write itself succeeded; a stale mirror is not data loss
            log.exception("could not mirror latest state into the buffer")
        else:
            self._note_writable()

    # --- typed writes -----------------------------------------------------------------------

    async def record_trade_updates(self, account: str, updates: Iterable[TradeUpdate]) -> int:
        """Store each event exactly once; returns how many were new (see write_many).

        To keep `orders` current in the same transaction, combine ops yourself:
        `write_many([trade_update_op(a, u) for u in us] + [order_op(a, u.order) for u in us])`.
        """
        return await self.write_many([trade_update_op(account, u) for u in updates])

    async def upsert_orders(
        self,
        account: str,
        orders: Iterable[Order],
        signal_ids: Mapping[str, int] | None = None,
    ) -> int:
        """Upsert orders; an older snapshot never overwrites a newer one (updated_at).

        `signal_ids` maps client_order_id -> signals.id to link an order to its signal.
        """
        links = signal_ids or {}
        return await self.write_many(
            [order_op(account, o, links.get(o.client_order_id)) for o in orders]
        )

    async def heartbeat(self, hb: Heartbeat) -> None:
        await self.write(Op("heartbeat", enc({
            "process": hb.process, "account": hb.account, "role": hb.role, "pid": hb.pid,
            "ts": hb.ts, "started_at": hb.started_at, "counters": dict(hb.counters),
        })))

    async def record_run(self, rec: RunRecord) -> None:
        await self.write(Op("run", run_payload(rec)))

    async def sync_positions(
        self, account: str, positions: Sequence[Position], as_of: datetime
    ) -> None:
        """Replace the account's current set (unless a newer sync is stored); add history."""
        await self.write(Op("positions", enc({
            "account": account, "synced_at": as_of,
            "positions": [position_payload(p) for p in positions],
        })))

    async def record_account(self, account: str, info: AccountInfo, as_of: datetime) -> None:
        await self.write(Op("account", enc({
            "account": account, "account_number": info.account_number, "equity": info.equity,
            "cash": info.cash, "buying_power": info.buying_power,
            "last_equity": info.last_equity, "as_of": as_of,
        })))

    async def set_control(
        self, account: str, key: str, value: Any, by: str, at: datetime | None = None
    ) -> None:
        """Set a control (e.g. key 'kill_switch', value {"mode": "halt"}); newest wins."""
        await self.write(Op("control", enc({
            "account": account, "key": key, "value": value, "updated_at": at or utcnow(),
            "updated_by": by,
        })))

    async def open_incident(
        self,
        kind: str,
        *,
        detail: str,
        process: str | None = None,
        account: str | None = None,
        dedupe_key: str | None = None,
        at: datetime | None = None,
    ) -> str:
        """Open an incident; with a dedupe_key already open, returns the open one's id.

        During an outage the new id is returned; the replay keeps the older open incident
        if one exists, so prefer closing/bumping by dedupe_key.
        """
        new_id = str(uuid.uuid4())
        await self.write(Op("incident_open", enc({
            "id": new_id, "kind": kind, "process": process, "account": account,
            "detail": detail, "opened_at": at or utcnow(), "restarts": 0,
            "dedupe_key": dedupe_key, "opened_pid": os.getpid(),
            "opened_host": socket.gethostname(),
            # supervisord sets this in its children's environment: an incident raised by
            # a process it does not supervise (a hand-run `ops run`) is closed by the
            # watchdog once that process is gone (ops/core/incidents.py).
            "supervised": os.environ.get("SUPERVISOR_ENABLED") == "1",
        })))
        if dedupe_key is None or not self._reachable:
            return new_id
        try:
            existing = await self._pool.fetchval(
                "SELECT id::text FROM incidents WHERE dedupe_key = $1 AND closed_at IS NULL",
                dedupe_key,
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            return new_id
        return str(existing or new_id)

    async def bump_incident(
        self,
        *,
        incident_id: str | None = None,
        dedupe_key: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Count one more restart on an open incident (exactly once, even when replayed)."""
        if incident_id is None and dedupe_key is None:
            raise ValueError("bump_incident needs incident_id or dedupe_key")
        await self.write(Op("incident_bump", {
            "op_id": new_op_id(), "id": incident_id, "dedupe_key": dedupe_key, "detail": detail,
        }))

    async def close_incident(
        self,
        *,
        incident_id: str | None = None,
        dedupe_key: str | None = None,
        at: datetime | None = None,
        reason: str | None = None,
        by: str | None = None,
    ) -> None:
        """Close the open incident; `reason` says why (its condition cleared, an operator
        closed it), `by` who (default: this store's process)."""
        if incident_id is None and dedupe_key is None:
            raise ValueError("close_incident needs incident_id or dedupe_key")
        await self.write(Op("incident_close", enc({
            "id": incident_id, "dedupe_key": dedupe_key, "closed_at": at or utcnow(),
            "reason": reason, "closed_by": by or self.process,
        })))

    async def insert_signal(
        self,
        *,
        account: str,
        symbol: str,
        side: str,
        qty: Decimal | None = None,
        notional: Decimal | None = None,
        order_type: str = "market",
        limit_price: Decimal | None = None,
        time_in_force: str = "day",
        strategy: str | None = None,
        idempotency_key: str | None = None,
        created_at: datetime | None = None,
        expires_at: datetime | None = None,
        reduce_only: bool = False,
    ) -> int | None:
        """Insert a signal once per idempotency_key; its id, or None while buffered.
        `reduce_only`: an exit, refused by the dispatcher if it would open, grow or flip
        a position."""
        if (qty is None) == (notional is None):
            raise ValueError(f"signal for {symbol}: exactly one of qty or notional is needed")
        key = idempotency_key or f"auto:{uuid.uuid4().hex}"
        await self.write(Op("signal", enc({
            "idempotency_key": key, "account": account, "symbol": symbol, "side": side,
            "qty": qty, "notional": notional, "order_type": order_type,
            "limit_price": limit_price, "time_in_force": time_in_force, "strategy": strategy,
            "created_at": created_at or utcnow(), "expires_at": expires_at,
            "reduce_only": reduce_only,
        })))
        if not self._reachable:
            return None
        try:
            sid = await self._pool.fetchval(
                "SELECT id FROM signals WHERE idempotency_key = $1", key
            )
        except Exception as exc:
            if not is_outage(exc):
                raise
            return None
        return None if sid is None else int(sid)

    async def record_signal_decision(
        self,
        signal_id: int,
        status: str,
        *,
        reason: str | None = None,
        client_order_id: str | None = None,
        broker_order_id: str | None = None,
        attempts: int | None = None,
        decided_at: datetime | None = None,
    ) -> None:
        """Record what the dispatcher decided; an older decision never overwrites a newer."""
        await self.write(Op("signal_decision", enc({
            "signal_id": signal_id, "status": status, "reason": reason,
            "client_order_id": client_order_id, "broker_order_id": broker_order_id,
            "decided_at": decided_at or utcnow(), "attempts": attempts,
        })))


async def _apply_atomically(conn: asyncpg.Connection, ops: Sequence[Op]) -> int:
    """Apply `ops` all or nothing. A batch that plans to ONE statement (a stream batch, a
    run of events) is atomic by itself: sent without BEGIN/COMMIT, one round trip."""
    steps = plan(ops)
    if len(steps) == 1 and steps[0].statement is not None:
        return await run_steps(conn, steps)
    async with conn.transaction():
        return await run_steps(conn, steps)


__all__ = [
    "AccountState", "Control", "DrainLock", "Incident", "Snapshot", "Store", "StoreSettings",
    "StoredPosition", "decode_run", "order_op", "position_payload", "run_payload",
    "trade_update_op",
]
