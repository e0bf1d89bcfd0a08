"""`ops incidents`: list, show, acknowledge and close incidents from the command line.

`ops incidents [list] [--all | --since 24h] [--json]`, `ops incidents show ID`,
`ops incidents ack ID`, `ops incidents close ID --reason TEXT`. An ID is the first
characters of the incident's id (at least 4; `list` shows 8). Acknowledging and closing
are recorded as `cli:<user>`.

These read and write Postgres directly (ops.store.incidents): an operator acting on an
incident needs the truth, not the buffer's copy, so Postgres unreachable is an error
(exit 1), never a guess. Exit codes: 0 done; 1 Postgres unreachable, or the incident is
closed (nothing to acknowledge or close); 2 a bad argument (an id malformed, unknown or
ambiguous, an empty reason) or a config error, as the other commands.

Also home of the incident's words (`describe`, `record_json`), shared with the dashboard's
detail screen so both say exactly the same. What does not live here: the incident rules
(ops/core/incidents.py), the queries (ops/store/incidents.py), argument parsing (ops/cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ops.core.config import Config, ConfigError
from ops.core.incidents import IncidentRecord
from ops.runtime.config import load_runtime_config
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv
from ops.runtime.errors import describe_db_error
from ops.store import StorageUnavailable, Store
from ops.store.incidents import AmbiguousIncident, ack_incident, find_incident, list_incidents
from ops.store.postgres import redact_url

SHORT_ID = 8  # characters of the id `list` shows; enough to name one in practice
DETAIL_WIDTH = 100  # the first line of the detail, as `list` shows it
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Unreachable(Exception):
    """Postgres did not answer; the message says what was (not) done."""


class BadId(Exception):
    """An id that is malformed, unknown or ambiguous; the message names it."""


# --- words -----------------------------------------------------------------------------------


def short_id(incident_id: str) -> str:
    return incident_id[:SHORT_ID]


def state_of(rec: IncidentRecord) -> str:
    """open | acked | closed."""
    if not rec.is_open:
        return "closed"
    return "acked" if rec.acked else "open"


def where_of(process: str | None, account: str | None) -> str:
    return process or account or "-"


def first_line(detail: str, width: int = DETAIL_WIDTH) -> str:
    line = detail.strip().splitlines()[0] if detail.strip() else ""
    return line if len(line) <= width else line[:width - 1] + "…"


def age(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 100:
        return f"{s:.0f}s"
    if s < 100 * 60:
        return f"{s / 60:.0f}m"
    if s < 48 * 3600:
        return f"{s / 3600:.1f}h".replace(".0h", "h")
    return f"{s / 86400:.1f}d".replace(".0d", "d")


def stamp(t: datetime, now: datetime | None = None) -> str:
    """'2026-12-05 08:00:00Z', with '(5m ago)' when `now` is given."""
    text = f"{t.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"
    return text if now is None else f"{text} ({age((now - t).total_seconds())} ago)"


def _supervision(supervised: bool | None) -> str:
    return {True: "supervised", False: "not supervised (hand-run)",
            None: "supervision unknown"}[supervised]


def ending(rec: IncidentRecord, now: datetime) -> str:
    """How it ended, in one line: 'still open (for 12m)' or 'closed <when> after 5m by X:
    reason'."""
    if rec.closed_at is None:
        return f"still open (for {age((now - rec.opened_at).total_seconds())})"
    lasted = age((rec.closed_at - rec.opened_at).total_seconds())
    by = f" by {rec.closed_by}" if rec.closed_by else ""
    why = f": {rec.close_reason}" if rec.close_reason else " (no reason recorded)"
    return f"closed at {stamp(rec.closed_at, now)} after {lasted}{by}{why}"


def describe(rec: IncidentRecord, now: datetime) -> list[str]:
    """Every field of the incident and its full detail text, as `ops incidents show`
    prints it (and the dashboard's detail screen shows it)."""
    opened_by = " ".join(x for x in (
        f"pid {rec.opened_pid}" if rec.opened_pid is not None else "",
        f"on {rec.opened_host}" if rec.opened_host else "") if x) or "unknown"
    acked = "no" if rec.acked_at is None else \
        f"by {rec.acked_by or '?'} at {stamp(rec.acked_at, now)}"
    fields = [
        ("id", rec.id),
        ("kind", rec.kind),
        ("state", {"open": "OPEN", "acked": "OPEN, acknowledged (does not degrade the report)",
                   "closed": "closed"}[state_of(rec)]),
        ("process", rec.process or "-"),
        ("account", rec.account or "-"),
        ("opened", stamp(rec.opened_at, now)),
        ("raised by", f"{opened_by}, {_supervision(rec.supervised)}"),
        ("last seen", stamp(rec.last_seen, now)),
        ("seen by", ", ".join(rec.seen_by) or "-"),
        ("restarts", str(rec.restarts)),
        ("dedupe key", rec.dedupe_key or "-"),
        ("acknowledged", acked),
        ("ended", ending(rec, now)),
        ("closed by", rec.closed_by or "-"),
        ("close reason", rec.close_reason or "-"),
    ]
    lines = [f"{name + ':':<14}{value}" for name, value in fields]
    lines += ["", "detail:"]
    lines += [f"  {line}" for line in (rec.detail.splitlines() or ["(none)"])]
    return lines


def record_json(rec: IncidentRecord, now: datetime) -> dict[str, Any]:
    """One incident as `--json` prints it: every field, timestamps in ISO 8601."""

    def ts(t: datetime | None) -> str | None:
        return None if t is None else t.isoformat()

    end = rec.closed_at or now
    return {
        "id": rec.id, "short_id": short_id(rec.id), "state": state_of(rec), "kind": rec.kind,
        "process": rec.process, "account": rec.account,
        "where": where_of(rec.process, rec.account), "detail": rec.detail,
        "opened_at": ts(rec.opened_at), "age_s": round((now - rec.opened_at).total_seconds(), 3),
        "duration_s": round((end - rec.opened_at).total_seconds(), 3),
        "last_seen_at": ts(rec.last_seen), "seen_by": list(rec.seen_by),
        "restarts": rec.restarts, "dedupe_key": rec.dedupe_key,
        "opened_pid": rec.opened_pid, "opened_host": rec.opened_host,
        "supervised": rec.supervised, "acked_at": ts(rec.acked_at), "acked_by": rec.acked_by,
        "closed_at": ts(rec.closed_at), "closed_by": rec.closed_by,
        "close_reason": rec.close_reason,
    }


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def list_lines(records: Sequence[IncidentRecord], now: datetime, *, closed_too: bool,
               limit: int) -> list[str]:
    """The `list` table: one row per incident, a 'seen by' line under those more than one
    process reported."""
    n_open = sum(1 for r in records if r.is_open)
    n_acked = sum(1 for r in records if r.is_open and r.acked)
    head = ("no open incidents" if n_open == 0 else
            f"{n_open} open incident{'s' if n_open != 1 else ''}"
            + (f" ({n_acked} acknowledged)" if n_acked else ""))
    if closed_too:
        head += f", {len(records) - n_open} closed"
    lines = [head]
    if not records:
        return lines
    rows = [["ID", "STATE", "KIND", "WHERE", "AGE", "DETAIL"]]
    for r in records:
        if not r.is_open:
            assert r.closed_at is not None
            state = f"closed {age((now - r.closed_at).total_seconds())} ago"
        elif r.acked:
            state = f"ACKED by {r.acked_by or '?'}"
        else:
            state = "OPEN"
        rows.append([short_id(r.id), state, r.kind, where_of(r.process, r.account),
                     age((now - r.opened_at).total_seconds()), first_line(r.detail)])
    table = _table(rows)
    lines.append(table[0])
    indent = " " * (SHORT_ID + 2)
    for r, line in zip(records, table[1:], strict=True):
        lines.append(line)
        if len(r.seen_by) > 1:
            lines.append(f"{indent}seen by {len(r.seen_by)}: {', '.join(r.seen_by)}")
    if len(records) >= limit:
        lines.append(f"(the first {limit} shown: open ones, then the newest; see --limit)")
    return lines


# --- the commands ----------------------------------------------------------------------------


def operator() -> str:
    from ops.runtime.env import current_user

    return f"cli:{current_user()}"


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"ops {command}: error: {message}", file=sys.stderr)
    return code


async def _pg(store: Store, what: str, step: Awaitable[Any]) -> Any:
    """`step` against Postgres; an outage becomes `Unreachable` saying nothing was `what`."""
    try:
        return await step
    except StorageUnavailable as exc:
        error = describe_db_error(exc)[:200]
        raise Unreachable(f"Postgres is unreachable ({redact_url(store.url)}: {error}); "
                          f"incidents live there: nothing was {what}") from exc


async def _find(store: Store, ident: str, what: str) -> IncidentRecord:
    try:
        rec = await _pg(store, what, store.direct(find_incident, ident))
    except (AmbiguousIncident, ValueError) as exc:
        raise BadId(str(exc)) from exc
    if rec is None:
        raise BadId(f"no incident with an id starting {ident.strip()!r} "
                    "(`ops incidents list --all` lists them)")
    assert isinstance(rec, IncidentRecord)
    return rec


def _closed_line(rec: IncidentRecord, now: datetime) -> str:
    return (f"incident {short_id(rec.id)} ({rec.kind}, {where_of(rec.process, rec.account)}) "
            f"is already {ending(rec, now)}")


async def _list(store: Store, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    since = None
    if args.all:
        since = _EPOCH
    elif args.since is not None:
        from ops.commands.gaps import parse_since

        since = now - parse_since(args.since)  # validated before anything was opened
    records = await _pg(store, "read",
                        store.direct(list_incidents, closed_since=since, limit=args.limit))
    if args.json:
        print(json.dumps({
            "as_of": now.isoformat(),
            "closed_since": None if since is None else since.isoformat(),
            "count": len(records),
            "incidents": [record_json(r, now) for r in records],
        }, indent=2))
    else:
        print("\n".join(list_lines(records, now, closed_too=since is not None,
                                   limit=args.limit)))
    return 0


async def _show(store: Store, args: argparse.Namespace) -> int:
    rec = await _find(store, args.id, "read")
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps(record_json(rec, now), indent=2))
    else:
        print("\n".join(describe(rec, now)))
    return 0


async def _ack(store: Store, args: argparse.Namespace) -> int:
    rec = await _find(store, args.id, "acknowledged")
    now = datetime.now(UTC)
    name = f"incident {short_id(rec.id)} ({rec.kind}, {where_of(rec.process, rec.account)})"
    if not rec.is_open:
        print(f"ops incidents ack: {_closed_line(rec, now)}: nothing to acknowledge",
              file=sys.stderr)
        return 1
    if rec.acked_at is not None:
        print(f"{name} was already acknowledged by {rec.acked_by or '?'} at "
              f"{stamp(rec.acked_at, now)}; nothing changed")
        return 0
    by = operator()
    if await _pg(store, "acknowledged", store.direct(ack_incident, rec.id, by, now)):
        print(f"{name} acknowledged by {by}: it stays listed, but no longer makes "
              "`ops status` degraded; it still closes when its condition clears")
        return 0
    # Closed or acknowledged between the read and the write: say what happened instead.
    after = await _find(store, rec.id, "acknowledged")
    if not after.is_open:
        print(f"ops incidents ack: {_closed_line(after, now)}: nothing to acknowledge",
              file=sys.stderr)
        return 1
    print(f"{name} was acknowledged meanwhile by {after.acked_by or '?'}; nothing changed")
    return 0


async def _close(store: Store, args: argparse.Namespace) -> int:
    reason = args.reason.strip()
    rec = await _find(store, args.id, "closed")
    now = datetime.now(UTC)
    if not rec.is_open:
        print(f"ops incidents close: {_closed_line(rec, now)}", file=sys.stderr)
        return 1
    by = operator()
    await store.close_incident(incident_id=rec.id, reason=reason, by=by, at=now)
    after = await _pg(store, "confirmed closed", store.direct(find_incident, rec.id))
    name = f"incident {short_id(rec.id)} ({rec.kind}, {where_of(rec.process, rec.account)})"
    if after is not None and not after.is_open and after.closed_by == by:
        print(f"{name} closed by {by} after "
              f"{age((now - rec.opened_at).total_seconds())}: {reason}")
        return 0
    if after is not None and not after.is_open:  # someone else closed it meanwhile
        print(f"ops incidents close: {_closed_line(after, now)}", file=sys.stderr)
        return 1
    # Earlier writes wait in the local buffer (Postgres was away): ours queues behind them.
    print(f"ops incidents close: {name}: the close is queued in the local buffer behind "
          "earlier writes and applies once they reach Postgres; it is still open now",
          file=sys.stderr)
    return 1


_HANDLERS: dict[str, Callable[[Store, argparse.Namespace], Awaitable[int]]] = {
    "list": _list, "show": _show, "ack": _ack, "close": _close,
}


def _validate(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments (before anything is opened), or None."""
    if args.incidents_command == "list":
        if args.all and args.since is not None:
            return "give --all or --since, not both"
        from ops.commands.gaps import listing_problem

        if (problem := listing_problem(args.since, args.limit)) is not None:
            return problem
    if args.incidents_command == "close" and not args.reason.strip():
        return "--reason must say why it is closed (it is recorded with the incident)"
    return None


async def _run(env: RuntimeEnv, config: Config, args: argparse.Namespace) -> int:
    from ops.commands.status import oneshot_store_settings

    # Short timeouts: an outage costs seconds, not the roles' patient defaults.
    settings = oneshot_store_settings(env, config)
    async with await Store.open(env, process=operator(), config=settings) as store:
        return await _HANDLERS[args.incidents_command](store, args)


def cli_incidents(args: argparse.Namespace) -> int:
    if args.incidents_command is None:  # plain `ops incidents [--all ...]`: list
        args.incidents_command = "list"
    command = f"incidents {args.incidents_command}"
    problem = _validate(args)
    if problem is not None:
        return _fail(command, problem)
    try:
        env, config = load_runtime_config()
    except ConfigError as exc:
        return _fail(command, str(exc), EXIT_CONFIG)
    from ops.runtime.logs import configure_logging

    # Errors are said once, here; the store's outage warnings would only repeat them.
    configure_logging("ops-incidents", level="CRITICAL")
    try:
        return asyncio.run(_run(env, config, args))
    except BadId as exc:
        return _fail(command, str(exc))
    except Unreachable as exc:
        return _fail(command, str(exc), code=1)
