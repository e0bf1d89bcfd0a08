"""Read queries behind the dashboard's history: account series, the run ledger over a
window, fills for realised P&L, incident spans; and `ops gaps`'s stretches between runs.
Postgres only (none of it has a buffered copy): run through `Store` (its history reads,
`Store.direct`), an outage raises `StorageUnavailable` and the caller says so.

What lives here: the SQL and the rows it returns, as plain dataclasses. What does not: any
judgement of the rows (late / missed / failed slots, P&L: `tui/history.py` with the
thresholds of `ops.core.gaps`), nor rendering.

Every query is bounded by an index: `account_history` by its primary key (account,
minute), `runs` by `runs_slot_time_idx` (the window) and `runs_process_finished_idx` (one
probe per process for the last run before the window), incidents by the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides


@dataclass(frozen=True, slots=True)
class AccountPoint:
    """The newest account summary of one minute (migration 0019)."""

    account: str
    as_of: datetime
    equity: Decimal | None
    last_equity: Decimal | None  # the broker's previous close: day P&L = equity - this


@dataclass(frozen=True, slots=True)
class RunBucket:
    """Completed runs of one process whose start falls in bucket `index` of the window
    (bucket i covers [start + i*bucket_s, start + (i+1)*bucket_s))."""

    process: str
    index: int
    ok: int
    failed: int  # outcome error or timeout
    idle: int  # idle-market-closed or paused: runs, but no work by design


@dataclass(frozen=True, slots=True)
class RunHole:
    """No completed run of `process` between `after` (a run finished) and `before` (the
    next one began): a candidate gap, as `ops gaps` finds them."""

    process: str
    after: datetime
    before: datetime


@dataclass(frozen=True, slots=True)
class ProcessSpan:
    """Where a process's runs start and end: `prior` the last run finished before the
    window (None: none kept), `first` / `last` the first start / last finish inside it."""

    process: str
    account: str | None
    role: str | None
    prior: datetime | None
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True, slots=True)
class RunLedgerWindow:
    start: datetime
    end: datetime
    bucket_s: float
    buckets: list[RunBucket]
    holes: list[RunHole]
    spans: dict[str, ProcessSpan]


@dataclass(frozen=True, slots=True)
class FillRecord:
    id: int  # order_events.id: grows as fills are stored (not by execution time)
    account: str
    symbol: str
    side: str  # buy | sell ("" when its order is not stored)
    qty: Decimal
    price: Decimal
    ts: datetime  # execution time
    asset_class: str


@dataclass(frozen=True, slots=True)
class IncidentSpan:
    id: str
    kind: str
    process: str | None
    account: str | None
    opened_at: datetime
    closed_at: datetime | None  # None: still open


_ACCOUNT_SQL = """
SELECT account, as_of, equity, last_equity FROM account_history
WHERE minute >= $1 AND minute <= $2 ORDER BY account, minute
"""

# Runs that started in the window, counted per process and bucket. The same runs as
# `ops gaps` counts (completed, not 'running').
_BUCKETS_SQL = """
SELECT process,
       floor(extract(epoch FROM coalesce(started_at, finished_at) - $1)::float8 / $3::float8)::int
           AS bucket,
       count(*) FILTER (WHERE outcome = 'ok') AS ok,
       count(*) FILTER (WHERE outcome IN ('error', 'timeout')) AS failed,
       count(*) FILTER (WHERE outcome NOT IN ('ok', 'error', 'timeout')) AS idle,
       min(account) AS account, min(role) AS role,
       min(coalesce(started_at, finished_at)) AS first, max(finished_at) AS last
FROM runs
WHERE slot_time >= $1 AND slot_time < $2 AND finished_at IS NOT NULL AND outcome <> 'running'
GROUP BY process, bucket
"""
# Stretches between consecutive runs longer than $3 seconds (ops.commands.gaps's query,
# bounded by the window on the indexed slot_time).
_HOLES_SQL = """
WITH r AS (
    SELECT process, coalesce(started_at, finished_at) AS began,
           lag(finished_at) OVER (PARTITION BY process
                                  ORDER BY coalesce(started_at, finished_at)) AS prev
    FROM runs
    WHERE slot_time >= $1 AND slot_time < $2 AND finished_at IS NOT NULL
      AND outcome <> 'running'
)
SELECT process, prev, began FROM r
WHERE prev IS NOT NULL AND began - prev > make_interval(secs => $3::float8)
ORDER BY process, prev
"""
# One index probe per process (runs_process_finished_idx): its last run before the window.
_PRIOR_SQL = """
SELECT p.process,
       (SELECT finished_at FROM runs
        WHERE runs.process = p.process AND finished_at IS NOT NULL AND finished_at < $1
        ORDER BY finished_at DESC LIMIT 1) AS prior
FROM unnest($2::text[]) AS p(process)
"""
_FILLS_SQL = """
SELECT f.id, f.account, coalesce(f.symbol, o.symbol) AS symbol, coalesce(o.side, '') AS side,
       f.qty, f.price, f.ts, coalesce(o.asset_class, '') AS asset_class
FROM fills f LEFT JOIN orders o ON o.id = f.order_id
WHERE f.id > $1 AND f.qty IS NOT NULL AND f.price IS NOT NULL
ORDER BY f.id
"""
_INCIDENTS_SQL = """
SELECT id::text, kind, process, account, opened_at, closed_at FROM incidents
WHERE opened_at < $2 AND (closed_at IS NULL OR closed_at >= $1)
ORDER BY opened_at
LIMIT $3
"""


async def account_points(pool: asyncpg.Pool, start: datetime, end: datetime,
                         ) -> list[AccountPoint]:
    """Every account's one-a-minute summaries from `start` to `end`, oldest first."""
    rows = await pool.fetch(_ACCOUNT_SQL, start, end)
    return [AccountPoint(r["account"], r["as_of"], r["equity"], r["last_equity"])
            for r in rows]


async def run_ledger_window(pool: asyncpg.Pool, start: datetime, end: datetime,
                            bucket_s: float, processes: Sequence[str],
                            min_hole_s: float) -> RunLedgerWindow:
    """The run ledger from `start` to `end` in buckets of `bucket_s`, the holes longer than
    `min_hole_s` between runs, and where each process's runs begin and end. `processes`
    are probed for their last run before the window even when none ran inside it."""
    if bucket_s <= 0 or end <= start:
        raise ValueError(f"bad run ledger window: {start} .. {end}, bucket {bucket_s}s")
    async with pool.acquire() as conn:
        b_rows = await conn.fetch(_BUCKETS_SQL, start, end, bucket_s)
        h_rows = await conn.fetch(_HOLES_SQL, start, end, min_hole_s)
        names = sorted({*processes, *(r["process"] for r in b_rows)})
        p_rows = await conn.fetch(_PRIOR_SQL, start, names)
    first: dict[str, datetime] = {}
    last: dict[str, datetime] = {}
    ident: dict[str, tuple[str | None, str | None]] = {}
    for r in b_rows:
        p = r["process"]
        ident.setdefault(p, (r["account"], r["role"]))
        if p not in first or r["first"] < first[p]:
            first[p] = r["first"]
        if p not in last or r["last"] > last[p]:
            last[p] = r["last"]
    spans = {r["process"]: ProcessSpan(r["process"], *ident.get(r["process"], (None, None)),
                                       r["prior"], first.get(r["process"]),
                                       last.get(r["process"]))
             for r in p_rows}
    return RunLedgerWindow(
        start, end, bucket_s,
        [RunBucket(r["process"], int(r["bucket"]), int(r["ok"]), int(r["failed"]),
                   int(r["idle"])) for r in b_rows],
        [RunHole(r["process"], r["prev"], r["began"]) for r in h_rows],
        spans)


async def fills_after(pool: asyncpg.Pool, after_id: int) -> list[FillRecord]:
    """Every identified fill stored after event id `after_id` (0: all), in storage order,
    with its order's side and asset class."""
    rows = await pool.fetch(_FILLS_SQL, after_id)
    return [FillRecord(int(r["id"]), r["account"], r["symbol"] or "?", r["side"], r["qty"],
                       r["price"], r["ts"], r["asset_class"]) for r in rows]


async def incident_spans(pool: asyncpg.Pool, start: datetime, end: datetime,
                         limit: int = 200) -> list[IncidentSpan]:
    """Incidents open at any time between `start` and `end`, oldest first."""
    rows = await pool.fetch(_INCIDENTS_SQL, start, end, limit)
    return [IncidentSpan(r["id"], r["kind"], r["process"], r["account"], r["opened_at"],
                         r["closed_at"]) for r in rows]


# --- `ops gaps` (ops/commands/gaps.py): every stretch between runs, not bucketed --------------


@dataclass(frozen=True, slots=True)
class LedgerGap:
    """A stretch between two consecutive completed runs of a process."""

    process: str
    account: str | None
    role: str
    prev: datetime  # the earlier run finished
    began: datetime  # the next one began
    gap_s: float


@dataclass(frozen=True, slots=True)
class LastRun:
    process: str
    account: str | None
    role: str
    finished_at: datetime


_GAPS_SQL = """
WITH r AS (
    SELECT process, account, role, coalesce(started_at, finished_at) AS began, finished_at,
           lag(finished_at) OVER (PARTITION BY process
                                  ORDER BY coalesce(started_at, finished_at)) AS prev
    FROM runs
    WHERE finished_at IS NOT NULL AND outcome <> 'running' AND finished_at >= $1
)
SELECT process, account, role, prev, began,
       extract(epoch FROM began - prev)::float8 AS gap_s
FROM r WHERE prev IS NOT NULL AND began - prev > make_interval(secs => $2)
ORDER BY prev
"""
_LAST_SQL = """
SELECT DISTINCT ON (process) process, account, role, finished_at FROM runs
WHERE finished_at IS NOT NULL AND outcome <> 'running'
ORDER BY process, finished_at DESC
"""


async def ledger_gaps(pool: asyncpg.Pool, since: datetime, min_gap_s: float,
                      ) -> tuple[list[LedgerGap], list[LastRun]]:
    """Stretches longer than `min_gap_s` between consecutive runs finished since `since`
    (oldest first), and every process's last completed run."""
    gaps = await pool.fetch(_GAPS_SQL, since, min_gap_s)
    last = await pool.fetch(_LAST_SQL)
    return ([LedgerGap(r["process"], r["account"], r["role"], r["prev"], r["began"],
                       float(r["gap_s"])) for r in gaps],
            [LastRun(r["process"], r["account"], r["role"], r["finished_at"]) for r in last])
