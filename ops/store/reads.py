"""Reads: what `Store` reads for the roles, `ops status` and the dashboard.

Postgres first; during an outage the buffer's latest-state table, said so
(`Snapshot.source == "buffer"`); while replay is still catching up the two merged, newest
timestamp per entity winning (`"postgres+buffer"`). The history and signal reads have no
buffered copy: Postgres only, through `direct`, `StorageUnavailable` on an outage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.models import Heartbeat, RunRecord
from ops.store import history
from ops.store.buffer import LatestRow
from ops.store.codec import (
    AccountState,
    Control,
    Incident,
    StoredPosition,
    decode_account,
    decode_control,
    decode_heartbeat,
    decode_incident,
    decode_positions,
    decode_run,
    pg_payload,
    utcnow,
)
from ops.store.core import StoreCore
from ops.store.ops import Payload, control_key, enc
from ops.store.postgres import is_outage
from ops.store.signal_records import SignalRecord, find_signal, list_signals

T = TypeVar("T")

Source = Literal["postgres", "buffer", "postgres+buffer"]


@dataclass(frozen=True, slots=True)
class Snapshot(Generic[T]):
    """Rows read for a caller, and where they came from."""

    rows: list[T]
    source: Source
    as_of: datetime  # when Postgres was read, or the newest buffered timestamp

    @property
    def buffered(self) -> bool:
        return self.source != "postgres"


_LATEST_RUNS_OF_SQL = """
SELECT r.* FROM unnest($1::text[]) AS p(name)
CROSS JOIN LATERAL (
    SELECT * FROM runs
    WHERE process = p.name AND finished_at IS NOT NULL AND outcome <> 'running'
    ORDER BY finished_at DESC LIMIT 1
) r
"""


class Reads(StoreCore):
    """The read part of `Store` (ops/store/store.py)."""

    async def _read(
        self,
        kind: str,
        query: str | Callable[[asyncpg.Connection], Awaitable[list[Payload]]],
        args: Sequence[Any],
        key: Callable[[Payload], str],
        ts_field: str,
        decode: Callable[[Payload], T],
        keep: Callable[[Payload], bool] = lambda p: True,
    ) -> Snapshot[T]:
        """Postgres first; the buffer's latest-state during an outage; merged while draining."""
        pg: list[Payload] | None
        try:
            async with self._pool.acquire() as conn:
                if isinstance(query, str):
                    pg = [pg_payload(r) for r in await conn.fetch(query, *args)]
                else:
                    pg = await query(conn)
            self._reachable = True
        except Exception as exc:
            if not is_outage(exc):
                raise
            self._note_outage(exc)
            pg = None
        pending = pg is None or await self._buffer.has_pending()
        if pg is not None and not pending:
            return Snapshot([decode(p) for p in pg], "postgres", utcnow())
        buffered: list[LatestRow] = [r for r in await self._buffer.latest(kind) if keep(r.payload)]
        merged: dict[str, Payload] = {}
        for p in pg or []:
            merged[key(p)] = p
        newest: datetime | None = None
        for row in buffered:
            ts = datetime.fromisoformat(row.ts)
            newest = ts if newest is None or ts > newest else newest
            have = merged.get(row.key)
            if have is None or datetime.fromisoformat(str(have[ts_field])) <= ts:
                merged[row.key] = row.payload
        rows = [decode(p) for _, p in sorted(merged.items())]
        if pg is None:
            return Snapshot(rows, "buffer", newest or datetime.fromtimestamp(0, UTC))
        return Snapshot(rows, "postgres+buffer", utcnow())

    async def heartbeats(self) -> Snapshot[Heartbeat]:
        return await self._read(
            "heartbeat", "SELECT * FROM heartbeats ORDER BY process", (),
            lambda p: str(p["process"]), "ts", decode_heartbeat,
        )

    async def latest_runs(self) -> Snapshot[RunRecord]:
        """The last completed run per process.

        The ledger only grows (~200k rows a day for the demo stack), and status, the
        dashboard and the watchdog ask every second: so no DISTINCT ON over the table, but
        a loose index scan over runs_process_finished_idx (skip from one process to the
        next) and one index probe per process: O(processes), not O(rows).
        """
        sql = """
            WITH RECURSIVE procs(process) AS (
                -- "finished_at IS NOT NULL" matches the partial index's predicate.
                (SELECT process FROM runs WHERE finished_at IS NOT NULL
                 ORDER BY process LIMIT 1)
                UNION ALL
                SELECT (SELECT r.process FROM runs r
                        WHERE r.process > procs.process AND r.finished_at IS NOT NULL
                        ORDER BY r.process LIMIT 1)
                FROM procs WHERE procs.process IS NOT NULL
            )
            SELECT last.* FROM procs
            CROSS JOIN LATERAL (
                SELECT * FROM runs
                WHERE runs.process = procs.process
                  AND finished_at IS NOT NULL AND outcome <> 'running'
                ORDER BY finished_at DESC LIMIT 1
            ) last
            WHERE procs.process IS NOT NULL
        """
        return await self._read(
            "run", sql, (), lambda p: str(p["process"]), "finished_at", decode_run,
        )

    async def latest_runs_of(self, names: Sequence[str], *, timeout_s: float,
                             ) -> Snapshot[RunRecord]:
        """The last completed run of each of `names` (the watchdog's every pass).

        `latest_runs()` walks every process of the ledger; here one index probe per named
        process, in Postgres (within `timeout_s`) while it answers and the buffer holds
        nothing; during an outage, or while replay catches up, `latest_runs()`'s merged
        read is the truth."""
        if self._reachable and not await self._buffer.has_pending():
            try:
                rows = await self._pool.fetch(_LATEST_RUNS_OF_SQL, list(names),
                                              timeout=timeout_s)
            except Exception as exc:
                if not is_outage(exc):
                    raise
            else:
                return Snapshot([decode_run(pg_payload(r)) for r in rows], "postgres",
                                utcnow())
        return await self.latest_runs()

    async def positions(self, account: str | None = None) -> Snapshot[StoredPosition]:

        async def fetch(conn: asyncpg.Connection) -> list[Payload]:
            syncs = await conn.fetch(
                "SELECT account, synced_at FROM position_syncs"
                " WHERE $1::text IS NULL OR account = $1 ORDER BY account", account)
            rows = await conn.fetch(
                "SELECT * FROM positions WHERE $1::text IS NULL OR account = $1"
                " ORDER BY account, symbol", account)
            by_account: dict[str, list[Payload]] = {s["account"]: [] for s in syncs}
            for r in rows:
                by_account.setdefault(r["account"], []).append(pg_payload(r))
            return [{"account": s["account"], "synced_at": enc(s["synced_at"]),
                     "positions": by_account[s["account"]]} for s in syncs]

        snap = await self._read(
            "positions", fetch, (), lambda p: str(p["account"]), "synced_at",
            lambda p: p, keep=lambda p: account is None or p["account"] == account,
        )
        rows = [pos for sync in snap.rows for pos in decode_positions(sync)]
        return Snapshot(rows, snap.source, snap.as_of)

    async def account_states(self) -> Snapshot[AccountState]:
        sql = "SELECT name AS account, * FROM account_state ORDER BY name"
        return await self._read(
            "account", sql, (), lambda p: str(p["account"]), "as_of", decode_account,
        )

    async def open_incidents(self) -> Snapshot[Incident]:
        sql = """
            SELECT id, kind, process, account, detail, opened_at, restarts, dedupe_key,
                   acked_by, acked_at
            FROM incidents WHERE closed_at IS NULL ORDER BY opened_at
        """
        return await self._read(
            "incident", sql, (), lambda p: str(p.get("dedupe_key") or p["id"]), "opened_at",
            decode_incident,
        )

    async def controls(self, account: str) -> Snapshot[Control]:
        sql = "SELECT * FROM controls WHERE account = $1 ORDER BY key"
        return await self._read(
            "control", sql, (account,), lambda p: control_key(p["account"], p["key"]),
            "updated_at", decode_control, keep=lambda p: p["account"] == account,
        )

    # --- history reads (ops/store/history.py): Postgres only, StorageUnavailable on outage -

    async def account_history(self, start: datetime, end: datetime,
                              ) -> list[history.AccountPoint]:
        return await self.direct(history.account_points, start, end)

    async def run_ledger_window(self, start: datetime, end: datetime, bucket_s: float,
                                processes: Sequence[str], min_hole_s: float,
                                ) -> history.RunLedgerWindow:
        return await self.direct(history.run_ledger_window, start, end, bucket_s, processes,
                                 min_hole_s)

    async def fills_after(self, after_id: int) -> list[history.FillRecord]:
        return await self.direct(history.fills_after, after_id)

    async def incident_spans(self, start: datetime, end: datetime,
                             ) -> list[history.IncidentSpan]:
        return await self.direct(history.incident_spans, start, end)

    async def signals(self, *, account: str | None = None,
                      states: Sequence[str] | None = None, since: datetime | None = None,
                      limit: int = 200) -> list[SignalRecord]:
        """Signals newest first, each with the order it became (`ops signal list`, the
        dashboard's pane). Postgres only: raises `StorageUnavailable` on an outage."""
        return await self.direct(list_signals, account=account, states=states, since=since,
                                 limit=limit)

    async def signal(self, signal_id: int) -> SignalRecord | None:
        """One signal in full, with its order (`ops signal show`, `ops signal add`'s wait).
        Postgres only: raises `StorageUnavailable` on an outage."""
        return await self.direct(find_signal, signal_id)
