"""Incident reads and operator writes beyond the store's open/bump/close ops.

What lives here: the full incident record (`IncidentRecord`: who reported it, when it was
last seen, acknowledgement, how it ended), listing and finding incidents (`list_incidents`,
`find_incident` by id prefix), and acknowledging one (`ack_incident`). Opening, bumping
and closing stay Store ops (ops/store/store.py), buffered through an outage; these go
straight to Postgres: they serve an operator (`ops incidents`, the dashboard) and the
watchdog's sweep (ops/incidents.py), which need the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

_COLUMNS = ("id::text AS id, kind, process, account, detail, opened_at, closed_at, restarts, "
            "dedupe_key, seen_by, last_seen_at, opened_pid, opened_host, supervised, "
            "acked_at, acked_by, closed_by, close_reason")


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    id: str
    kind: str
    process: str | None
    account: str | None
    detail: str
    opened_at: datetime
    closed_at: datetime | None
    restarts: int
    dedupe_key: str | None
    seen_by: tuple[str, ...]
    last_seen_at: datetime | None
    opened_pid: int | None
    opened_host: str | None
    supervised: bool | None
    acked_at: datetime | None
    acked_by: str | None
    closed_by: str | None
    close_reason: str | None

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None

    @property
    def last_seen(self) -> datetime:
        return self.last_seen_at or self.opened_at


def _record(r: asyncpg.Record) -> IncidentRecord:
    return IncidentRecord(
        r["id"], r["kind"], r["process"], r["account"], r["detail"] or "", r["opened_at"],
        r["closed_at"], int(r["restarts"]), r["dedupe_key"], tuple(r["seen_by"] or ()),
        r["last_seen_at"], r["opened_pid"], r["opened_host"], r["supervised"], r["acked_at"],
        r["acked_by"], r["closed_by"], r["close_reason"])


async def list_incidents(pool: asyncpg.Pool, *, closed_since: datetime | None = None,
                         limit: int = 200) -> list[IncidentRecord]:
    """Open incidents, plus those closed since `closed_since` (when given), newest first."""
    rows = await pool.fetch(
        f"SELECT {_COLUMNS} FROM incidents WHERE closed_at IS NULL"
        " OR ($1::timestamptz IS NOT NULL AND closed_at >= $1::timestamptz)"
        " ORDER BY closed_at IS NULL DESC, opened_at DESC LIMIT $2", closed_since, limit)
    return [_record(r) for r in rows]


async def open_records(pool: asyncpg.Pool) -> list[IncidentRecord]:
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM incidents WHERE closed_at IS NULL"
                            " ORDER BY opened_at")
    return [_record(r) for r in rows]


class AmbiguousIncident(LookupError):
    """An id prefix that names more than one incident."""

    def __init__(self, prefix: str, ids: Sequence[str]) -> None:
        super().__init__(f"incident id {prefix!r} is ambiguous: it starts "
                         f"{', '.join(i[:13] for i in ids[:5])}"
                         + (" ..." if len(ids) > 5 else "") + "; give more characters")


async def find_incident(pool: asyncpg.Pool, prefix: str) -> IncidentRecord | None:
    """The incident whose id starts with `prefix` (at least 4 hex characters), or None.
    Raises AmbiguousIncident when more than one does, ValueError for a malformed prefix."""
    clean = prefix.strip().lower()
    if len(clean) < 4 or any(c not in "0123456789abcdef-" for c in clean):
        raise ValueError(f"incident id {prefix!r}: give at least 4 characters of the id "
                         "(hex digits, as `ops incidents` lists them)")
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM incidents WHERE id::text LIKE $1"
                            " ORDER BY opened_at DESC LIMIT 6", clean + "%")
    if len(rows) > 1:
        raise AmbiguousIncident(prefix, [r["id"] for r in rows])
    return _record(rows[0]) if rows else None


async def ack_incident(pool: asyncpg.Pool, incident_id: str, by: str, at: datetime) -> bool:
    """Acknowledge an open incident: it stays visible, but no longer makes the report
    degraded. False when it is not open (closed meanwhile, or already acknowledged)."""
    status = await pool.execute(
        "UPDATE incidents SET acked_at = $3, acked_by = $2"
        " WHERE id = $1::text::uuid AND closed_at IS NULL AND acked_at IS NULL",
        incident_id, by, at)
    return str(status).endswith(" 1")


__all__ = ["AmbiguousIncident", "IncidentRecord", "ack_incident", "find_incident",
           "list_incidents", "open_records"]
