"""Incident reads and operator writes beyond the store's open/bump/close ops.

What lives here: the full incident record (`IncidentRecord`: who reported it, when it was
last seen, acknowledgement, how it ended), listing and finding incidents (`list_incidents`,
`find_incident` by id prefix, `incidents_since`, `is_open`), acknowledging one
(`ack_incident`), replacing an open one's detail (`set_detail`), and the dashboard's
recently closed ones and restarts. Opening, bumping and closing stay Store ops
(ops/store/store.py), buffered through an outage; these go straight to Postgres (run
through `Store.direct`: an outage raises `StorageUnavailable`): they serve an operator
(`ops incidents`, the dashboard) and the watchdog's sweep (ops/core/incidents.py), which need
the truth.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.incidents import IncidentRecord

_COLUMNS = ("id::text AS id, kind, process, account, detail, opened_at, closed_at, restarts, "
            "dedupe_key, seen_by, last_seen_at, opened_pid, opened_host, supervised, "
            "acked_at, acked_by, closed_by, close_reason")


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


async def incidents_since(pool: asyncpg.Pool, since: datetime) -> list[IncidentRecord]:
    """Incidents opened since `since`, still open, or closed since then; oldest first
    (`ops gaps`)."""
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM incidents"
                            " WHERE opened_at >= $1 OR closed_at IS NULL OR closed_at >= $1"
                            " ORDER BY opened_at", since)
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


async def is_open(pool: asyncpg.Pool, dedupe_key: str, *, timeout_s: float | None = None,
                  ) -> bool:
    """Whether an incident with this dedupe key is open."""
    found = await pool.fetchval(
        "SELECT 1 FROM incidents WHERE dedupe_key = $1 AND closed_at IS NULL",
        dedupe_key, timeout=timeout_s)
    return found is not None


async def set_detail(pool: asyncpg.Pool, dedupe_key: str, detail: str, *,
                     timeout_s: float | None = None) -> None:
    """Replace the detail of the open incident with this dedupe key (none open: nothing)."""
    await pool.execute(
        "UPDATE incidents SET detail = $2 WHERE dedupe_key = $1 AND closed_at IS NULL",
        dedupe_key, detail, timeout=timeout_s)


_CLOSED_SQL = """
SELECT id::text, kind, process, account, detail, opened_at, closed_at, restarts, acked_by,
       acked_at
FROM incidents WHERE closed_at IS NOT NULL AND closed_at >= $1
ORDER BY closed_at DESC LIMIT $2
"""
_RESTARTS_SQL = """
SELECT process, sum(restarts)::int AS n FROM incidents
WHERE process IS NOT NULL AND (opened_at >= $1 OR closed_at IS NULL OR closed_at >= $1)
GROUP BY process
"""


async def recently_closed(pool: asyncpg.Pool, since: datetime, limit: int,
                          ) -> list[Mapping[str, Any]]:
    """Incidents closed since `since`, newest first (the dashboard's list): rows keyed by
    column (id, kind, process, account, detail, opened_at, closed_at, restarts, acked_by,
    acked_at)."""
    return list(await pool.fetch(_CLOSED_SQL, since, limit))


async def restarts_since(pool: asyncpg.Pool, since: datetime) -> dict[str, int]:
    """Restarts per process counted on incidents open at any time since `since`."""
    rows = await pool.fetch(_RESTARTS_SQL, since)
    return {r["process"]: int(r["n"] or 0) for r in rows}


__all__ = ["AmbiguousIncident", "ack_incident", "find_incident", "incidents_since", "is_open",
           "list_incidents", "open_records", "recently_closed", "restarts_since", "set_detail"]
