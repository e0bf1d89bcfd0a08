"""Typed write operations: one `Op` per write, replayable idempotently by natural keys.

An `Op` is a kind name plus a JSON-serialisable payload, so the very same object can be
applied to Postgres now or parked in the SQLite buffer and applied later. Each kind has
one `apply(conn, payloads) -> int` that runs idempotent SQL for a whole batch (executemany
or one set-based statement) and returns how many rows were newly stored or changed.

Every SQL parameter is sent as text and cast in SQL (`$1::text::numeric`), so payloads
never need Python-side re-typing: Decimals and datetimes travel as their exact strings.

Kinds that describe "latest state" (heartbeats, completed runs, positions, account
summary, controls, open incidents) also yield `LatestEntry`s, which the buffer keeps so
readers can work through an outage.
"""

from __future__ import annotations

import json
import operator
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

Payload = dict[str, Any]
ApplyFn = Callable[[asyncpg.Connection, Sequence[Payload]], Awaitable[int]]
# A whole batch as ONE statement (SQL, its arguments) whose single value is the count.
Statement = tuple[str, Sequence[Any]]
StatementFn = Callable[[Sequence[Payload]], Statement]


@dataclass(frozen=True, slots=True)
class Op:
    """One write: `kind` names an entry of KINDS; `payload` is plain JSON data."""

    kind: str
    payload: Payload


@dataclass(frozen=True, slots=True)
class LatestEntry:
    """Latest-state row for the buffer; payload None deletes the entry (closed incident)."""

    kind: str
    key: str
    ts: str
    payload: Payload | None


@dataclass(frozen=True, slots=True)
class Kind:
    """One op kind. `apply` runs a batch; kinds whose batch is one statement also have
    `statement`, so a batch can be encoded ahead of its turn (see `plan`)."""

    name: str
    apply: ApplyFn
    latest: Callable[[Payload], list[LatestEntry]] | None = None
    statement: StatementFn | None = None


# --- encoding -------------------------------------------------------------------------------


def enc(value: Any) -> Any:
    """A JSON-safe form of a model value. Naive datetimes are refused (ambiguous zone)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value.value if isinstance(value, Enum) else value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} cannot be stored: add a tz")
        return value.isoformat()
    if isinstance(value, Enum):
        return enc(value.value)
    if isinstance(value, Mapping):
        return {str(k): enc(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [enc(v) for v in value]
    return str(value)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


# Column type per SQL cast; "json" values are dumped, the rest sent as str.
Cols = Sequence[tuple[str, str]]


def _placeholders(cols: Cols, start: int = 1) -> str:
    out = []
    for i, (_, typ) in enumerate(cols, start):
        out.append(f"${i}::text" if typ == "text" else f"${i}::text::{typ}")
    return ", ".join(out)


def _arg(value: Any, typ: str) -> str | None:
    if value is None:
        return None
    if typ == "jsonb":
        return dumps(value)
    return str(value)


def _args(payload: Payload, cols: Cols) -> tuple[str | None, ...]:
    return tuple(_arg(payload.get(name), typ) for name, typ in cols)


def _names(cols: Cols) -> str:
    return ", ".join(name for name, _ in cols)


# Set-based statements take one parameter per column: as one string, the values joined by
# US (0x1f), RS (0x1e) standing for NULL, split again in SQL (cheap for asyncpg to send:
# it checks every element of a text[] in Python), or as a text[] when a value would not
# split back exactly.
_US, _RS = "\x1f", "\x1e"


def _joined(column: Sequence[str | None]) -> str | None:
    """`column` as one US-joined string, or None when that would not split back exactly
    (a value holding US or RS, or a lone empty string, which splits to no element)."""
    nulls = column.count(None)  # most columns have none, or are all null: no Python loop
    if not nulls:
        text = _US.join(column)  # type: ignore[arg-type]  # no None in it
    elif nulls == len(column):
        text = _US.join([_RS] * nulls)
    else:
        text = _US.join([_RS if v is None else v for v in column])
    if not text or text.count(_US) != len(column) - 1 or text.count(_RS) != nulls:
        return None
    return text


@dataclass(frozen=True, slots=True)
class _ColumnSql:
    """A statement whose template reads `{columns}`, in both parameter forms."""

    joined: str
    arrays: str

    @classmethod
    def of(cls, template: str, n: int) -> _ColumnSql:
        return cls(
            template.replace("{columns}", ", ".join(
                f"string_to_array(${i + 1}::text, E'\\x1f', E'\\x1e')" for i in range(n))),
            template.replace("{columns}", ", ".join(f"${i + 1}::text[]" for i in range(n))),
        )

    def statement(self, columns: Sequence[Sequence[str | None]]) -> Statement:
        joined = [_joined(c) for c in columns]
        if all(j is not None for j in joined):
            return self.joined, joined
        return self.arrays, [list(c) for c in columns]


async def _run(conn: asyncpg.Connection, statement: Statement) -> int:
    sql, args = statement
    return int(await conn.fetchval(sql, *args))


def _statement_kind(name: str, statement: StatementFn) -> Kind:
    """A kind whose batch is one statement; `apply` runs it."""
    async def apply(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
        return await _run(conn, statement(payloads))
    return Kind(name, apply, statement=statement)


# --- order events ---------------------------------------------------------------------------

_EVENT_COLS: Cols = (
    ("account", "text"), ("event_key", "text"), ("order_id", "text"),
    ("client_order_id", "text"), ("symbol", "text"), ("event", "text"),
    ("ts", "timestamptz"), ("execution_id", "text"), ("price", "numeric"), ("qty", "numeric"),
    ("position_qty", "numeric"), ("raw", "json"), ("cum_qty", "numeric"),
)
_FILL_EVENTS = ("fill", "partial_fill")
_CUM_TEXT = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def legacy_fill_cum(payload: Payload) -> str | None:
    """The fill identity's cumulative quantity of an event payload written before payloads
    carried "cum_qty" (buffered by an older version, replayed now): read from what the
    row kept verbatim, the activity's cum_qty or the stream order's filled_qty."""
    if payload.get("event") not in _FILL_EVENTS:
        return None
    raw = payload.get("raw")
    try:
        data = json.loads(raw) if isinstance(raw, str) else raw
        activity = data.get("activity") if isinstance(data, dict) else None
        order = (data.get("data") or {}).get("order") if isinstance(data, dict) else None
        value = (activity.get("cum_qty") if isinstance(activity, dict) else None) or (
            order.get("filled_qty") if isinstance(order, dict) else None)
    except (ValueError, AttributeError):
        return None
    text = str(value) if isinstance(value, (str, int, float)) else ""
    return text if _CUM_TEXT.match(text) and Decimal(text) > 0 else None


def _cum(payload: Payload) -> str | None:
    return payload["cum_qty"] if "cum_qty" in payload else legacy_fill_cum(payload)
# One set-based statement per batch, one text[] per column. (Measured: sending the JSON
# payload texts and extracting fields in SQL is ~30% slower than this on Postgres 16.)
_EVENT_SQL_TEMPLATE = f"""
WITH ins AS (
    INSERT INTO order_events ({_names(_EVENT_COLS)})
    SELECT {", ".join(f"c{i}" if t == "text" else f"c{i}::{t}"
                      for i, (_, t) in enumerate(_EVENT_COLS))}
    FROM unnest({{columns}})
         WITH ORDINALITY AS u({", ".join(f"c{i}" for i in range(len(_EVENT_COLS)))}, n)
    ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM ins
"""
_EVENT_SQL = _ColumnSql.of(_EVENT_SQL_TEMPLATE, len(_EVENT_COLS))


def _event_statement(payloads: Sequence[Payload]) -> Statement:
    """One INSERT for the whole batch; ids follow batch order (ORDER BY n)."""
    # Column-wise: the hot loop of the replay, where most values are already str or None.
    columns: list[list[str | None]] = []
    for name, typ in _EVENT_COLS:
        if name == "cum_qty":
            columns.append([_cum(p) for p in payloads])
        elif typ == "json":  # "raw": JSON text, or an object in rows buffered before
            columns.append([v if (v := p.get(name)) is None or type(v) is str else dumps(v)
                            for p in payloads])
        else:
            columns.append([v if (v := p.get(name)) is None or type(v) is str else str(v)
                            for p in payloads])
    return _EVENT_SQL.statement(columns)


# --- orders ---------------------------------------------------------------------------------

_ORDER_COLS: Cols = (
    ("id", "text"), ("account", "text"), ("client_order_id", "text"), ("symbol", "text"),
    ("side", "text"), ("order_type", "text"), ("time_in_force", "text"), ("qty", "numeric"),
    ("notional", "numeric"), ("filled_qty", "numeric"), ("filled_avg_price", "numeric"),
    ("limit_price", "numeric"), ("stop_price", "numeric"), ("status", "text"),
    ("asset_class", "text"), ("created_at", "timestamptz"), ("updated_at", "timestamptz"),
    ("submitted_at", "timestamptz"), ("filled_at", "timestamptz"),
    ("canceled_at", "timestamptz"), ("raw", "jsonb"), ("signal_id", "bigint"),
)
_ORDER_SQL = f"""
INSERT INTO orders ({_names(_ORDER_COLS)}) VALUES ({_placeholders(_ORDER_COLS)})
ON CONFLICT (id) DO UPDATE SET
    {", ".join(f"{n} = excluded.{n}" for n, _ in _ORDER_COLS if n not in ("id", "signal_id"))},
    signal_id = coalesce(excluded.signal_id, orders.signal_id)
WHERE excluded.updated_at >= orders.updated_at
"""


async def _executemany(
    conn: asyncpg.Connection, sql: str, payloads: Sequence[Payload], cols: Cols
) -> int:
    await conn.executemany(sql, [_args(p, cols) for p in payloads])
    return len(payloads)


async def _apply_orders(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _ORDER_SQL, payloads, _ORDER_COLS)


# --- trade updates: event + order state in one statement ------------------------------------

# One trade update off the stream: its order_events row and its order's state. Every
# value is text; "raw" is the update's JSON text (stored as is, never re-encoded) and
# "order_raw" the order's JSON text, or null for the order object inside "raw"
# (data.order, as on the wire). Built by ops/store/ingest.py.
TRADE_UPDATE_FIELDS: tuple[str, ...] = (
    "account", "event_key", "order_id", "client_order_id", "symbol", "event", "ts",
    "execution_id", "price", "qty", "position_qty", "cum_qty", "raw", "order_raw",
    "side", "order_type", "time_in_force", "order_qty", "notional", "filled_qty",
    "filled_avg_price", "limit_price", "stop_price", "status", "asset_class", "created_at",
    "updated_at", "submitted_at", "filled_at", "canceled_at",
)
_TU_NUM = ("order_qty", "notional", "filled_qty", "filled_avg_price", "limit_price",
           "stop_price")
_TU_TS = ("created_at", "updated_at", "submitted_at", "filled_at", "canceled_at")
_TU_SET = ("account", "client_order_id", "symbol", "side", "order_type", "time_in_force",
           "qty", "notional", "filled_qty", "filled_avg_price", "limit_price", "stop_price",
           "status", "asset_class", "created_at", "updated_at", "submitted_at", "filled_at",
           "canceled_at", "raw")
# One round trip per batch: the events in batch order (ids follow it: ORDER BY n), and the
# newest state per order (DISTINCT ON: ON CONFLICT may touch a row only once per
# statement; ties go to the later update, like the executemany it replaces), with the
# same forward-only rule as the "order" kind. signal_id is left alone (the dispatcher's).
# The order's raw JSON is parsed only for the state kept (one per order, not per event),
# and the sort that picks it carries only (order_id, updated_at, n), not the ~1 kB rows.
_TU_SQL_TEMPLATE = f"""
WITH u AS MATERIALIZED (
    SELECT * FROM unnest({{columns}})
         WITH ORDINALITY AS t({", ".join(TRADE_UPDATE_FIELDS)}, n)
), ins AS (
    INSERT INTO order_events (account, event_key, order_id, client_order_id, symbol, event,
                              ts, execution_id, price, qty, position_qty, cum_qty, raw)
    SELECT account, event_key, order_id, client_order_id, symbol, event, ts::timestamptz,
           execution_id, price::numeric, qty::numeric, position_qty::numeric,
           cum_qty::numeric, raw::json
    FROM u ORDER BY n
    ON CONFLICT DO NOTHING
    RETURNING 1
), ord AS (
    INSERT INTO orders (id, {", ".join(_TU_SET)})
    SELECT order_id, account, client_order_id, symbol, side, order_type, time_in_force,
           {", ".join(f"{c}::numeric" for c in _TU_NUM)}, status, asset_class,
           {", ".join(f"{c}::timestamptz" for c in _TU_TS)},
           coalesce(order_raw::jsonb, raw::jsonb -> 'data' -> 'order')
    FROM u JOIN (SELECT DISTINCT ON (order_id) n FROM u
                 ORDER BY order_id, updated_at::timestamptz DESC, n DESC) AS newest USING (n)
    ON CONFLICT (id) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in _TU_SET)}
    WHERE excluded.updated_at >= orders.updated_at
)
SELECT count(*) FROM ins
"""


_TU_SQL = _ColumnSql.of(_TU_SQL_TEMPLATE, len(TRADE_UPDATE_FIELDS))


_TU_ROW = operator.itemgetter(*TRADE_UPDATE_FIELDS)


def _trade_update_statement(payloads: Sequence[Payload]) -> Statement:
    """Events and order states of a batch in one statement; counts the new events."""
    try:  # the hot path of a stream burst: rows and their transposition in C
        rows = list(map(_TU_ROW, payloads))
    except KeyError:  # a payload buffered by an older version (no "cum_qty", ...)
        rows = [tuple(_cum(p) if name == "cum_qty" else p.get(name)
                      for name in TRADE_UPDATE_FIELDS) for p in payloads]
    if not rows:
        return _TU_SQL.statement([[] for _ in TRADE_UPDATE_FIELDS])
    return _TU_SQL.statement(list(zip(*rows, strict=True)))


# --- heartbeats and runs --------------------------------------------------------------------

_HB_COLS: Cols = (
    ("process", "text"), ("account", "text"), ("role", "text"), ("pid", "integer"),
    ("ts", "timestamptz"), ("started_at", "timestamptz"), ("counters", "jsonb"),
)
_HB_SQL = f"""
INSERT INTO heartbeats ({_names(_HB_COLS)}) VALUES ({_placeholders(_HB_COLS)})
ON CONFLICT (process) DO UPDATE SET
    {", ".join(f"{n} = excluded.{n}" for n, _ in _HB_COLS if n != "process")}
WHERE excluded.ts >= heartbeats.ts
"""


async def _apply_heartbeats(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _HB_SQL, payloads, _HB_COLS)


def _hb_latest(p: Payload) -> list[LatestEntry]:
    return [LatestEntry("heartbeat", p["process"], p["ts"], p)]


_RUN_COLS: Cols = (
    ("slot_id", "text"), ("process", "text"), ("account", "text"), ("role", "text"),
    ("slot_time", "timestamptz"), ("scheduled_at", "timestamptz"),
    ("started_at", "timestamptz"), ("finished_at", "timestamptz"), ("outcome", "text"),
    ("lateness_s", "double precision"), ("skipped_before", "integer"), ("error", "text"),
)
# A slot moves running -> final outcome once; a final row never changes again.
_RUN_SQL = f"""
INSERT INTO runs ({_names(_RUN_COLS)}) VALUES ({_placeholders(_RUN_COLS)})
ON CONFLICT (slot_id) DO UPDATE SET
    {", ".join(f"{n} = excluded.{n}" for n, _ in _RUN_COLS if n != "slot_id")}
WHERE runs.outcome = 'running'
"""


async def _apply_runs(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _RUN_SQL, payloads, _RUN_COLS)


def _run_latest(p: Payload) -> list[LatestEntry]:
    if p.get("finished_at") is None or p.get("outcome") == "running":
        return []
    return [LatestEntry("run", p["process"], p["finished_at"], p)]


# --- positions ------------------------------------------------------------------------------

_POS_COLS: Cols = (
    ("account", "text"), ("symbol", "text"), ("qty", "numeric"),
    ("avg_entry_price", "numeric"), ("cost_basis", "numeric"), ("market_value", "numeric"),
    ("current_price", "numeric"), ("lastday_price", "numeric"), ("unrealized_pl", "numeric"),
    ("unrealized_plpc", "numeric"), ("side", "text"), ("asset_class", "text"),
    ("opened_at", "timestamptz"), ("synced_at", "timestamptz"),
)
_POS_SQL = f"""
INSERT INTO positions ({_names(_POS_COLS)}) VALUES ({_placeholders(_POS_COLS)})
ON CONFLICT (account, symbol) DO UPDATE SET
    {", ".join(f"{n} = excluded.{n}" for n, _ in _POS_COLS
               if n not in ("account", "symbol", "opened_at"))},
    opened_at = coalesce(positions.opened_at, excluded.opened_at)
"""
_HIST_COLS: Cols = (
    ("account", "text"), ("symbol", "text"), ("synced_at", "timestamptz"), ("qty", "numeric"),
    ("avg_entry_price", "numeric"), ("cost_basis", "numeric"), ("market_value", "numeric"),
    ("current_price", "numeric"), ("unrealized_pl", "numeric"), ("side", "text"),
    ("asset_class", "text"),
)
_HIST_SQL = f"""
INSERT INTO position_history ({_names(_HIST_COLS)}) VALUES ({_placeholders(_HIST_COLS)})
ON CONFLICT (account, symbol, synced_at) DO NOTHING
"""
_SYNC_SQL = """
INSERT INTO position_syncs (account, synced_at, count) VALUES ($1, $2::text::timestamptz, $3)
ON CONFLICT (account) DO UPDATE SET synced_at = excluded.synced_at, count = excluded.count
WHERE excluded.synced_at >= position_syncs.synced_at
RETURNING 1
"""


async def _apply_position_syncs(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    """Replace each account's set, unless a newer sync is already stored; keep history."""
    changed = 0
    for p in payloads:
        account, synced_at = p["account"], p["synced_at"]
        rows = [{**pos, "account": account, "synced_at": synced_at} for pos in p["positions"]]
        await conn.executemany(_HIST_SQL, [_args(r, _HIST_COLS) for r in rows])
        newer = await conn.fetchval(_SYNC_SQL, account, synced_at, len(rows))
        if newer is None:
            continue  # an older replay: history kept, current set untouched
        symbols = [r["symbol"] for r in rows]
        await conn.execute(
            "DELETE FROM positions WHERE account = $1 AND NOT (symbol = ANY($2::text[]))",
            account, symbols,
        )
        for r in rows:
            r.setdefault("opened_at", synced_at)
        await conn.executemany(_POS_SQL, [_args(r, _POS_COLS) for r in rows])
        changed += 1
    return changed


def _pos_latest(p: Payload) -> list[LatestEntry]:
    return [LatestEntry("positions", p["account"], p["synced_at"], p)]


# --- account summary ------------------------------------------------------------------------

_ACCT_SQL = """
WITH a AS (
    INSERT INTO accounts (name, account_number, updated_at)
    VALUES ($1, $2, $7::text::timestamptz)
    ON CONFLICT (name) DO UPDATE SET account_number = excluded.account_number,
                                     updated_at = excluded.updated_at
    WHERE excluded.updated_at >= accounts.updated_at
), h AS (
    -- The series behind the dashboard's history (migration 0019): one row per minute,
    -- the newest summary of that minute.
    INSERT INTO account_history (account, minute, as_of, equity, last_equity, cash)
    VALUES ($1, to_timestamp(floor(extract(epoch FROM $7::text::timestamptz) / 60) * 60),
            $7::text::timestamptz, $3::text::numeric, $6::text::numeric, $4::text::numeric)
    ON CONFLICT (account, minute) DO UPDATE SET
        as_of = excluded.as_of, equity = excluded.equity,
        last_equity = excluded.last_equity, cash = excluded.cash
    WHERE excluded.as_of >= account_history.as_of
)
INSERT INTO account_state (name, account_number, equity, cash, buying_power, last_equity, as_of)
VALUES ($1, $2, $3::text::numeric, $4::text::numeric, $5::text::numeric, $6::text::numeric,
        $7::text::timestamptz)
ON CONFLICT (name) DO UPDATE SET
    account_number = excluded.account_number, equity = excluded.equity, cash = excluded.cash,
    buying_power = excluded.buying_power, last_equity = excluded.last_equity,
    as_of = excluded.as_of
WHERE excluded.as_of >= account_state.as_of
"""
_ACCT_COLS: Cols = (
    ("account", "text"), ("account_number", "text"), ("equity", "numeric"),
    ("cash", "numeric"), ("buying_power", "numeric"), ("last_equity", "numeric"),
    ("as_of", "timestamptz"),
)


async def _apply_accounts(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _ACCT_SQL, payloads, _ACCT_COLS)


def _acct_latest(p: Payload) -> list[LatestEntry]:
    return [LatestEntry("account", p["account"], p["as_of"], p)]


# --- controls -------------------------------------------------------------------------------

_CTRL_COLS: Cols = (
    ("account", "text"), ("key", "text"), ("value", "jsonb"), ("updated_at", "timestamptz"),
    ("updated_by", "text"),
)
_CTRL_SQL = f"""
INSERT INTO controls ({_names(_CTRL_COLS)}) VALUES ({_placeholders(_CTRL_COLS)})
ON CONFLICT (account, key) DO UPDATE SET
    value = excluded.value, updated_at = excluded.updated_at, updated_by = excluded.updated_by
WHERE excluded.updated_at >= controls.updated_at
"""


async def _apply_controls(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _CTRL_SQL, payloads, _CTRL_COLS)


def control_key(account: str, key: str) -> str:
    return dumps([account, key])


def _ctrl_latest(p: Payload) -> list[LatestEntry]:
    return [LatestEntry("control", control_key(p["account"], p["key"]), p["updated_at"], p)]


# --- incidents ------------------------------------------------------------------------------

_INC_COLS: Cols = (
    ("id", "uuid"), ("kind", "text"), ("process", "text"), ("account", "text"),
    ("detail", "text"), ("opened_at", "timestamptz"), ("restarts", "integer"),
    ("dedupe_key", "text"), ("opened_pid", "integer"), ("opened_host", "text"),
    ("supervised", "boolean"),
)
# A replay (same id) is a no-op. A report of an incident already open under the same
# dedupe key (one incident per kind and subject) adds its process to `seen_by` and moves
# `last_seen_at`; the first report's detail stays.
_INC_OPEN_SQL = f"""
INSERT INTO incidents ({_names(_INC_COLS)}, seen_by, last_seen_at)
SELECT {_placeholders(_INC_COLS)},
       CASE WHEN $3::text IS NULL THEN '{{}}'::text[] ELSE ARRAY[$3::text] END,
       $6::text::timestamptz
WHERE NOT EXISTS (SELECT 1 FROM incidents WHERE id = $1::text::uuid)
ON CONFLICT (dedupe_key) WHERE closed_at IS NULL DO UPDATE SET
    last_seen_at = greatest(incidents.last_seen_at, excluded.last_seen_at),
    seen_by = CASE WHEN excluded.process IS NULL OR excluded.process = ANY(incidents.seen_by)
                   THEN incidents.seen_by ELSE incidents.seen_by || excluded.process END
"""
_INC_CLOSE_SQL = """
UPDATE incidents SET closed_at = $3::text::timestamptz, close_reason = $4, closed_by = $5
WHERE closed_at IS NULL AND (id = $1::text::uuid OR dedupe_key = $2)
"""
# Counter bumps are not idempotent by nature: applied_ops remembers each bump's op id.
_INC_BUMP_SQL = """
WITH fresh AS (
    INSERT INTO applied_ops (op_id) VALUES ($1) ON CONFLICT DO NOTHING RETURNING 1
)
UPDATE incidents SET restarts = restarts + 1, detail = coalesce($4, detail)
WHERE closed_at IS NULL AND (id = $2::text::uuid OR dedupe_key = $3)
  AND EXISTS (SELECT 1 FROM fresh)
"""


async def _apply_incident_open(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _INC_OPEN_SQL, payloads, _INC_COLS)


async def _apply_incident_close(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    cols: Cols = (("id", "text"), ("dedupe_key", "text"), ("closed_at", "text"),
                  ("reason", "text"), ("closed_by", "text"))
    return await _executemany(conn, _INC_CLOSE_SQL, payloads, cols)


async def _apply_incident_bump(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    cols: Cols = (("op_id", "text"), ("id", "text"), ("dedupe_key", "text"), ("detail", "text"))
    return await _executemany(conn, _INC_BUMP_SQL, payloads, cols)


def incident_latest_key(p: Payload) -> str:
    return str(p.get("dedupe_key") or p["id"])


def _inc_open_latest(p: Payload) -> list[LatestEntry]:
    return [LatestEntry("incident", incident_latest_key(p), p["opened_at"], p)]


def _inc_close_latest(p: Payload) -> list[LatestEntry]:
    keys = [k for k in (p.get("dedupe_key"), p.get("id")) if k]
    return [LatestEntry("incident", str(k), p["closed_at"], None) for k in keys]


# --- signals --------------------------------------------------------------------------------

_SIG_COLS: Cols = (
    ("idempotency_key", "text"), ("account", "text"), ("symbol", "text"), ("side", "text"),
    ("qty", "numeric"), ("notional", "numeric"), ("order_type", "text"),
    ("limit_price", "numeric"), ("time_in_force", "text"), ("strategy", "text"),
    ("created_at", "timestamptz"), ("expires_at", "timestamptz"), ("reduce_only", "boolean"),
)
_SIG_SQL = f"""
INSERT INTO signals ({_names(_SIG_COLS)}) VALUES ({_placeholders(_SIG_COLS)})
ON CONFLICT (idempotency_key) DO NOTHING
"""
_DECISION_SQL = """
UPDATE signals SET
    status = $2, reason = $3,
    client_order_id = coalesce($4, client_order_id),
    broker_order_id = coalesce($5, broker_order_id),
    decided_at = $6::text::timestamptz,
    attempts = greatest(attempts, coalesce($7::text::integer, attempts))
WHERE id = $1::text::bigint
  AND (decided_at IS NULL OR decided_at <= $6::text::timestamptz)
"""
_DECISION_COLS: Cols = (
    ("signal_id", "text"), ("status", "text"), ("reason", "text"),
    ("client_order_id", "text"), ("broker_order_id", "text"), ("decided_at", "text"),
    ("attempts", "text"),
)


async def _apply_signals(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    # A signal buffered by a version without reduce_only: an ordinary signal (the column
    # refuses NULL).
    payloads = [p if p.get("reduce_only") is not None else {**p, "reduce_only": False}
                for p in payloads]
    return await _executemany(conn, _SIG_SQL, payloads, _SIG_COLS)


async def _apply_decisions(conn: asyncpg.Connection, payloads: Sequence[Payload]) -> int:
    return await _executemany(conn, _DECISION_SQL, payloads, _DECISION_COLS)


# --- registry -------------------------------------------------------------------------------

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        _statement_kind("order_event", _event_statement),
        Kind("order", _apply_orders),
        _statement_kind("trade_update", _trade_update_statement),
        Kind("heartbeat", _apply_heartbeats, _hb_latest),
        Kind("run", _apply_runs, _run_latest),
        Kind("positions", _apply_position_syncs, _pos_latest),
        Kind("account", _apply_accounts, _acct_latest),
        Kind("control", _apply_controls, _ctrl_latest),
        Kind("incident_open", _apply_incident_open, _inc_open_latest),
        Kind("incident_close", _apply_incident_close, _inc_close_latest),
        Kind("incident_bump", _apply_incident_bump),
        Kind("signal", _apply_signals),
        Kind("signal_decision", _apply_decisions),
    )
}


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown store op kind {name!r} (known: {sorted(KINDS)})") from None


@dataclass(frozen=True, slots=True)
class Step:
    """A run of consecutive same-kind ops; `statement` is its encoded form, when the kind
    has one (then encoding, pure CPU, can happen while Postgres works on an earlier step)."""

    kind: Kind
    payloads: Sequence[Payload]
    statement: Statement | None


def plan(ops: Sequence[Op]) -> list[Step]:
    """Ops as steps: each run of consecutive same-kind ops is one batch. Batching only
    consecutive runs keeps the order of writes exactly as given."""
    steps: list[Step] = []
    i = 0
    while i < len(ops):
        j = i
        while j < len(ops) and ops[j].kind == ops[i].kind:
            j += 1
        k = kind(ops[i].kind)
        payloads = [op.payload for op in ops[i:j]]
        steps.append(Step(k, payloads, None if k.statement is None else k.statement(payloads)))
        i = j
    return steps


async def run_steps(conn: asyncpg.Connection, steps: Sequence[Step]) -> int:
    """Apply planned steps in order; the caller owns the transaction."""
    total = 0
    for step in steps:
        if step.statement is not None:
            total += await _run(conn, step.statement)
        else:
            total += await step.kind.apply(conn, step.payloads)
    return total


async def apply_ops(conn: asyncpg.Connection, ops: Sequence[Op]) -> int:
    """Apply ops in order (see `plan`); the caller owns the transaction."""
    return await run_steps(conn, plan(ops))


def latest_entries(ops: Sequence[Op]) -> list[LatestEntry]:
    out: list[LatestEntry] = []
    for op in ops:
        fn = kind(op.kind).latest
        if fn is not None:
            out.extend(fn(op.payload))
    return out


def new_op_id() -> str:
    return uuid.uuid4().hex
