"""The dispatcher's signal queries and its LISTEN connection on channel 'signals'.

What lives here:
- `claim_pending()`: take a batch of an account's pending signals (`FOR UPDATE SKIP
  LOCKED`, so two claimers never get the same row) and mark them 'claimed' with their
  deterministic client_order_id; `leftovers()`: an account's signals still 'claimed' or
  'unknown' (a previous pass or process life did not finish them); `requeue()`: put such a
  signal back to 'pending' once the broker said definitively that it has no such order;
  `reject_unknown_accounts()`: reject pending signals for an account the config does not
  have (no dispatcher would ever claim them); `existing_keys()`: which idempotency keys
  are stored already (the signal engine's duplicate check).
- `buffered_signal_counts()`: how many signals per account wait in the host's outage
  buffer (written while Postgres was away, not replayed yet): what a dispatcher holds
  back during an outage. Read-only, over its own short-lived SQLite connection.
- `SignalListener`: a service holding a dedicated asyncpg connection that LISTENs on
  'signals' (the insert trigger in 0001_initial.sql sends the account name as payload)
  and calls `on_signal()` for its account; reconnects with back-off, and calls it once
  after every (re)connect, because notifications sent while disconnected are lost.

What does not: decisions (ops.core.risk), broker calls, and the accept/reject record itself,
which goes through `Store.record_signal_decision` so it survives a Postgres outage.
Every query here needs Postgres: claiming during an outage is impossible by design.
Every query is filtered by account: a dispatcher never touches another account's
signals (invariant 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.backoff import Backoff
from ops.core.risk import signal_client_order_id
from ops.store.postgres import connect, redact_url

log = logging.getLogger(__name__)

CHANNEL = "signals"
UNSETTLED = ("claimed", "unknown")


@dataclass(frozen=True, slots=True)
class SignalRow:
    """One row of `signals` as the dispatcher works with it."""

    id: int
    account: str
    symbol: str
    side: str
    qty: Decimal | None
    notional: Decimal | None
    order_type: str
    limit_price: Decimal | None
    time_in_force: str
    strategy: str | None
    created_at: datetime
    expires_at: datetime | None
    status: str
    reason: str | None
    client_order_id: str | None
    broker_order_id: str | None
    attempts: int
    reduce_only: bool = False

    @property
    def cid(self) -> str:
        """The deterministic client_order_id (whatever the row holds)."""
        return signal_client_order_id(self.account, self.id)


def _row(r: asyncpg.Record) -> SignalRow:
    return SignalRow(
        id=int(r["id"]), account=r["account"], symbol=r["symbol"], side=r["side"],
        qty=r["qty"], notional=r["notional"], order_type=r["order_type"],
        limit_price=r["limit_price"], time_in_force=r["time_in_force"],
        strategy=r["strategy"], created_at=r["created_at"], expires_at=r["expires_at"],
        status=r["status"], reason=r["reason"], client_order_id=r["client_order_id"],
        broker_order_id=r["broker_order_id"], attempts=int(r["attempts"]),
        reduce_only=bool(r["reduce_only"]),
    )


_COLUMNS = """id, account, symbol, side, qty, notional, order_type, limit_price, time_in_force,
    strategy, created_at, expires_at, status, reason, client_order_id, broker_order_id,
    attempts, reduce_only"""


async def claim_pending(pool: asyncpg.Pool, account: str, limit: int = 50) -> list[SignalRow]:
    """Claim up to `limit` of `account`'s oldest pending signals, in one transaction.

    Sets status 'claimed', the client_order_id and attempts + 1. decided_at is left alone:
    the decision recorded later must never lose to the claim on a timestamp comparison
    (the store's decision write keeps the newest decided_at).
    """
    if limit < 1:
        raise ValueError(f"claim_pending: limit must be >= 1, got {limit}")
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            f"""SELECT {_COLUMNS} FROM signals
                WHERE account = $1 AND status = 'pending'
                ORDER BY created_at, id LIMIT $2
                FOR UPDATE SKIP LOCKED""",
            account, limit,
        )
        if not rows:
            return []
        claimed = [_row(r) for r in rows]
        await conn.executemany(
            """UPDATE signals SET status = 'claimed', client_order_id = $2,
                   attempts = attempts + 1
               WHERE id = $1 AND account = $3 AND status = 'pending'""",
            [(s.id, s.cid, account) for s in claimed],
        )
    return [_claimed(s) for s in claimed]


def _claimed(s: SignalRow) -> SignalRow:
    return SignalRow(**{**_fields(s), "status": "claimed", "client_order_id": s.cid,
                        "attempts": s.attempts + 1})


def _fields(s: SignalRow) -> dict[str, Any]:
    return {name: getattr(s, name) for name in SignalRow.__slots__}


async def leftovers(pool: asyncpg.Pool, account: str) -> list[SignalRow]:
    """`account`'s signals still 'claimed' or 'unknown', oldest first."""
    rows = await pool.fetch(
        f"""SELECT {_COLUMNS} FROM signals
            WHERE account = $1 AND status = ANY($2::text[])
            ORDER BY created_at, id""",
        account, list(UNSETTLED),
    )
    return [_row(r) for r in rows]


async def requeue(pool: asyncpg.Pool, account: str, signal_id: int, reason: str) -> bool:
    """Put an unsettled signal back to 'pending' (the broker definitively has no order for
    its client_order_id). False if it was not unsettled any more."""
    done = await pool.fetchval(
        """UPDATE signals SET status = 'pending', reason = $3
           WHERE id = $1 AND account = $2 AND status = ANY($4::text[])
           RETURNING id""",
        signal_id, account, reason, list(UNSETTLED),
    )
    return done is not None


async def reject_unknown_accounts(
    pool: asyncpg.Pool, known: Sequence[str], limit: int = 50
) -> list[tuple[int, str]]:
    """Reject pending signals whose account is none of `known` (the configured accounts).

    No dispatcher would ever claim them (each claims only its own account's rows), so
    without this they would sit 'pending' forever, silently. Any dispatcher may run it:
    the row lock and the `status = 'pending'` condition make two concurrent runs reject
    each row once. Returns (id, account) of the rows rejected.
    """
    if not known:
        return []
    rows = await pool.fetch(
        """UPDATE signals SET status = 'rejected', decided_at = now(),
               reason = 'unknown account ' || quote_literal(account)
                        || ': not an account in the config (known: ' || $2 || ')'
           WHERE id IN (SELECT id FROM signals
                        WHERE status = 'pending' AND NOT (account = ANY($1::text[]))
                        ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED)
           RETURNING id, account""",
        list(known), ", ".join(sorted(known)), limit,
    )
    return [(int(r["id"]), str(r["account"])) for r in rows]


def _count_buffered(path: Path) -> dict[str, int]:
    # Read-only and separate from the Store's own connection: a count must never queue
    # behind (or hold up) the buffer's writers and its drainer.
    if not path.exists():
        return {}
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=2.0)
    try:
        rows = con.execute(
            "SELECT json_extract(payload, '$.account'), count(*) FROM pending "
            "WHERE kind = 'signal' GROUP BY 1").fetchall()
    finally:
        con.close()
    return {str(account): int(n) for account, n in rows if account is not None}


async def buffered_signal_counts(path: Path) -> dict[str, int] | None:
    """Signals per account in the outage buffer at `path` (the Store's `buffer.path`),
    not yet replayed into Postgres; None when the file cannot be read."""
    try:
        return await asyncio.to_thread(_count_buffered, path)
    except sqlite3.Error as exc:
        log.warning("buffered signals in %s not countable: %s", path, exc)
        return None


async def existing_keys(pool: asyncpg.Pool, keys: Sequence[str]) -> set[str]:
    """Which of these idempotency keys a stored signal already has."""
    rows = await pool.fetch(
        "SELECT idempotency_key FROM signals WHERE idempotency_key = ANY($1::text[])",
        list(keys))
    return {r["idempotency_key"] for r in rows}


async def get_signal(pool: asyncpg.Pool, signal_id: int) -> SignalRow | None:
    """One signal by id (tests and the CLI)."""
    r = await pool.fetchrow(f"SELECT {_COLUMNS} FROM signals WHERE id = $1", signal_id)
    return None if r is None else _row(r)


class SignalListener:
    """LISTEN on 'signals'; `on_signal()` for every notification naming `account`.

    A daemon service (`name`, `run()`, `request_stop()`). Postgres down: retries with
    back-off (the dispatcher's ticker keeps working meanwhile, so nothing waits on this).
    """

    def __init__(
        self,
        url: str,
        account: str,
        on_signal: Callable[[], None],
        *,
        backoff: Backoff | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.name = f"signal-listener-{account}"
        self.url = url
        self.account = account
        self._on_signal = on_signal
        self._backoff = backoff or Backoff(initial_s=0.2, max_s=5.0, max_attempts=0,
                                           deadline_s=None)
        self._connect_timeout_s = connect_timeout_s
        self._stop = asyncio.Event()
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.notifications = 0  # for this account (heartbeat counter)
        self.connects = 0

    def request_stop(self) -> None:
        self._stop.set()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        if payload != self.account:
            return  # another account's signal: not ours to touch
        self.notifications += 1
        self._on_signal()

    def _terminated(self, conn: object) -> None:
        self._lost.set()

    async def run(self) -> None:
        delays = self._backoff.delays()
        while not self._stop.is_set():
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect(self.url, connect_timeout=self._connect_timeout_s)
                self._lost.clear()
                conn.add_termination_listener(self._terminated)
                await conn.add_listener(CHANNEL, self._notified)
                self.connects += 1
                self.connected.set()
                delays = self._backoff.delays()
                log.info("listening on %r for account %s", CHANNEL, self.account)
                self._on_signal()  # whatever was inserted while we were not listening
                await self._wait_stop_or_lost()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN %r on %s failed: %s", CHANNEL, redact_url(self.url),
                            type(exc).__name__ + (f": {exc}" if str(exc) else ""))
            finally:
                self.connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2.0)
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), next(delays))

    async def _wait_stop_or_lost(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (stop, lost):
                t.cancel()
        if self._lost.is_set() and not self._stop.is_set():
            log.warning("LISTEN connection for %s lost; reconnecting", self.account)
