"""`ops signal list|show` and the words for a signal's verdict that `ops signal add` waits
for (ops/commands/control.py).

`ops signal list [--account TIER] [--status S] [--since 24h] [--limit N] [--json]`,
`ops signal show ID [--json]`. Like `ops incidents`, these read Postgres (through
`Store.signals()` / `Store.signal()`): a verdict is the dispatcher's word there, so
Postgres unreachable is an error (exit 1), never a guess from the outage buffer. Exit
codes: 0 done; 1 Postgres unreachable; 2 a bad argument (an unknown id, a malformed
--since or --limit, an account not in the config); 78 a config error (ops.runtime.env.EXIT_CONFIG).

Also home of the signal's words (`describe`, `record_json`, `verdict_line`), shared with
`ops signal add` and the dashboard's signals pane. What does not live here: validation and
insertion of a new signal (ops/commands/control.py), the queries (ops/store/signal_records.py),
argument parsing (ops/cli.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ops.commands.incidents import age, first_line, stamp
from ops.core.config import Config, ConfigError
from ops.runtime.config import load_runtime_config
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv
from ops.runtime.errors import describe_db_error
from ops.store import StorageUnavailable, Store
from ops.store.postgres import redact_url
from ops.store.signal_records import STATES, SignalRecord

REASON_WIDTH = 80  # the first line of the reason, as `list` shows it


class Unreachable(Exception):
    """Postgres did not answer; the message says what was not done."""


class BadArgument(Exception):
    """An id unknown or malformed; the message names it."""


# --- words -----------------------------------------------------------------------------------


def _num(x: Decimal) -> str:
    return format(x.normalize(), "f") if x else "0"


def size_text(qty: Decimal | None, notional: Decimal | None) -> str:
    """'2' (shares or contracts) or '$50' (dollar-sized)."""
    if qty is not None:
        return _num(qty)
    return f"${_num(notional)}" if notional is not None else "?"


def side_text(rec: SignalRecord) -> str:
    """'buy', 'sell', or 'sell (reduce-only)' for an exit."""
    return rec.side + (" (reduce-only)" if rec.reduce_only else "")


def order_text(rec: SignalRecord) -> str:
    """The order the signal became, in one line: id, status, filled so far."""
    oid = rec.order_id
    if oid is None:
        return "none"
    o = rec.order
    if o is None:
        return f"{oid} (not seen by the stream yet)"
    if not o.filled_qty:
        return f"{o.id} ({o.status})"
    price = f" @ {_num(o.filled_avg_price)}" if o.filled_avg_price is not None else ""
    filled = f"{_num(o.filled_qty)}{price}"
    return f"{o.id} (filled {filled})" if o.status == "filled" else \
        f"{o.id} ({o.status}, filled {filled})"


def verdict_line(rec: SignalRecord, now: datetime) -> str:
    """The dispatcher's verdict in one line, as `ops signal add` prints it."""
    state = rec.state
    took = ("" if rec.decided_at is None else
            f" after {age((rec.decided_at - rec.created_at).total_seconds())}")
    if state == "submitted":
        return f"submitted{took}: broker order {order_text(rec)}"
    if state in ("rejected", "expired"):
        return f"{state}{took}: {rec.reason or '(no reason recorded)'}"
    if state == "unknown":
        return ("sent; the broker's answer is not settled yet (the dispatcher looks the "
                f"order up on its next pass): {rec.reason or ''}").rstrip(": ")
    waited = age((now - rec.created_at).total_seconds())
    return (f"still queued after {waited} ({rec.status}); "
            + (f"last note: {rec.reason}" if rec.reason else "no decision yet"))


def describe(rec: SignalRecord, now: datetime) -> list[str]:
    """Every field of the signal, the order it became and the full reason, as `ops signal
    show` prints it."""
    o = rec.order
    fields = [
        ("id", str(rec.id)),
        ("state", rec.state + ("" if rec.state == rec.status else f" ({rec.status})")),
        ("account", rec.account),
        ("symbol", rec.symbol),
        ("side", side_text(rec)),
        ("qty", "-" if rec.qty is None else _num(rec.qty)),
        ("notional", "-" if rec.notional is None else f"${_num(rec.notional)}"),
        ("type", rec.order_type),
        ("limit price", "-" if rec.limit_price is None else _num(rec.limit_price)),
        ("time in force", rec.time_in_force),
        ("strategy", rec.strategy or "-"),
        ("key", rec.idempotency_key or "-"),
        ("created", stamp(rec.created_at, now)),
        ("expires", "-" if rec.expires_at is None else stamp(rec.expires_at)),
        ("decided", "-" if rec.decided_at is None else
         f"{stamp(rec.decided_at, now)}, "
         f"{age((rec.decided_at - rec.created_at).total_seconds())} after it was created"),
        ("attempts", str(rec.attempts)),
        ("client order", rec.client_order_id or "-"),
        ("broker order", rec.broker_order_id or "-"),
    ]
    if o is not None:
        fields += [
            ("order status", o.status),
            ("filled", f"{_num(o.filled_qty)}"
             + (f" @ {_num(o.filled_avg_price)}" if o.filled_avg_price is not None else "")
             + (f" of {_num(o.qty)}" if o.qty is not None else "")),
            ("order updated", stamp(o.updated_at, now)),
        ]
    elif rec.broker_order_id is not None:
        fields.append(("order status", "not seen by the stream yet"))
    lines = [f"{name + ':':<15}{value}" for name, value in fields]
    lines += ["", "reason:"]
    lines += [f"  {line}" for line in ((rec.reason or "").splitlines() or ["(none)"])]
    return lines


def _ts(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _dec(x: Decimal | None) -> str | None:
    return None if x is None else _num(x)


def record_json(rec: SignalRecord, now: datetime) -> dict[str, Any]:
    """One signal as `--json` prints it: every field, numbers as strings (exact),
    timestamps in ISO 8601."""
    o = rec.order
    return {
        "id": rec.id, "state": rec.state, "status": rec.status, "account": rec.account,
        "symbol": rec.symbol, "side": rec.side, "reduce_only": rec.reduce_only,
        "qty": _dec(rec.qty),
        "notional": _dec(rec.notional), "order_type": rec.order_type,
        "limit_price": _dec(rec.limit_price), "time_in_force": rec.time_in_force,
        "strategy": rec.strategy, "idempotency_key": rec.idempotency_key,
        "created_at": _ts(rec.created_at),
        "age_s": round((now - rec.created_at).total_seconds(), 3),
        "expires_at": _ts(rec.expires_at), "decided_at": _ts(rec.decided_at),
        "attempts": rec.attempts, "reason": rec.reason,
        "client_order_id": rec.client_order_id, "broker_order_id": rec.broker_order_id,
        "order": None if o is None else {
            "id": o.id, "status": o.status, "qty": _dec(o.qty), "notional": _dec(o.notional),
            "filled_qty": _dec(o.filled_qty), "filled_avg_price": _dec(o.filled_avg_price),
            "submitted_at": _ts(o.submitted_at), "filled_at": _ts(o.filled_at),
            "canceled_at": _ts(o.canceled_at), "updated_at": _ts(o.updated_at)},
    }


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows]


def list_lines(records: Sequence[SignalRecord], now: datetime, *, limit: int) -> list[str]:
    """The `list` table, newest first, under a head line counting each state."""
    if not records:
        return ["no signals"]
    counts = {word: sum(1 for r in records if r.state == word) for word in STATES}
    parts = [f"{n} {word}" for word, n in counts.items() if n]
    head = (f"{len(records)} signal{'s' if len(records) != 1 else ''}"
            + (f" ({', '.join(parts)})" if parts else ""))
    rows = [["ID", "ACCOUNT", "CREATED", "AGE", "SIDE", "SIZE", "SYMBOL", "STATE", "ORDER",
             "REASON"]]
    for r in records:
        rows.append([str(r.id), r.account, f"{r.created_at.astimezone(UTC):%H:%M:%S}Z",
                     age((now - r.created_at).total_seconds()), side_text(r),
                     size_text(r.qty, r.notional), r.symbol, r.state,
                     (r.order_id or "-")[:8], first_line(r.reason or "", REASON_WIDTH)])
    lines = [head, *_table(rows)]
    if len(records) >= limit:
        lines.append(f"(the newest {limit} shown; see --limit)")
    return lines


# --- waiting for the dispatcher (`ops signal add`) ---------------------------------------------


async def await_verdict(store: Store, signal_id: int, within_s: float, poll_s: float = 0.2,
                        ) -> tuple[SignalRecord | None, str | None]:
    """Read the signal until the dispatcher's final word is in or `within_s` passed:
    (the last read of it, why the last read failed: None when it did not)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    rec: SignalRecord | None = None
    error: str | None = None
    while True:
        try:
            rec, error = await store.signal(signal_id), None
        except StorageUnavailable:
            error = "Postgres is unreachable"
        if rec is not None and rec.decided:
            return rec, None
        left = deadline - loop.time()
        if left <= 0:
            return rec, error
        await asyncio.sleep(min(poll_s, left))


async def no_verdict_hint(store: Store, config: Config, account: str, now: datetime) -> str:
    """Why the account's dispatcher may not have decided, from its heartbeat row."""
    from ops.core.health import dispatch_pause
    from ops.supervise.supervisor import program_name

    process = program_name("dispatcher", account)
    try:
        beats = (await store.heartbeats()).rows
    except Exception as exc:  # the hint must never hide the answer it explains
        return f"the dispatcher may not be running ({process}: heartbeat unreadable: {exc})"
    hb = next((h for h in beats if h.process == process), None)
    if hb is None:
        return (f"the dispatcher may not be running: {process} has never reported a "
                "heartbeat (`ops status`; `ops up` starts it)")
    since = (now - hb.ts).total_seconds()
    if since > config.watchdog.heartbeat_stale_for("dispatcher"):
        return (f"the dispatcher may not be running: {process}'s last heartbeat was "
                f"{age(since)} ago (`ops status`)")
    pause = dispatch_pause(hb.counters, account)
    if pause is not None:
        return f"{process} holds dispatch back: {pause.describe()}"
    return (f"{process} is running (heartbeat {age(since)} ago) but has not decided it yet")


# --- the commands ----------------------------------------------------------------------------


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"ops {command}: error: {message}", file=sys.stderr)
    return code


async def _pg(store: Store, step: Awaitable[Any]) -> Any:
    """`step` against Postgres; an outage becomes `Unreachable`."""
    try:
        return await step
    except StorageUnavailable as exc:
        error = describe_db_error(exc)[:300]
        raise Unreachable(f"Postgres is unreachable ({redact_url(store.url)}: {error}); "
                          "signals live there: nothing was read") from exc


async def _list(store: Store, args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    since = None
    if args.since is not None:
        from ops.commands.gaps import parse_since

        since = now - parse_since(args.since)  # validated before anything was opened
    states = None if args.status is None else [args.status]
    records = await _pg(store, store.signals(account=args.account, states=states,
                                             since=since, limit=args.limit))
    if args.json:
        print(json.dumps({
            "as_of": now.isoformat(), "account": args.account, "status": args.status,
            "since": None if since is None else since.isoformat(), "count": len(records),
            "signals": [record_json(r, now) for r in records],
        }, indent=2))
    else:
        print("\n".join(list_lines(records, now, limit=args.limit)))
    return 0


def parse_id(text: str) -> int:
    """A signal id as `ops signal list` shows it (a positive integer)."""
    clean = text.strip().lstrip("#")
    if not clean.isdigit() or int(clean) < 1 or len(clean) > 18:
        raise BadArgument(f"signal id {text!r}: expected a positive whole number, as "
                          "`ops signal list` shows it")
    return int(clean)


async def _show(store: Store, args: argparse.Namespace) -> int:
    sid = parse_id(args.id)
    rec = await _pg(store, store.signal(sid))
    if rec is None:
        raise BadArgument(f"no signal with id {sid} (`ops signal list` lists them)")
    now = datetime.now(UTC)
    if args.json:
        print(json.dumps(record_json(rec, now), indent=2))
    else:
        print("\n".join(describe(rec, now)))
    return 0


_HANDLERS: dict[str, Callable[[Store, argparse.Namespace], Awaitable[int]]] = {
    "list": _list, "show": _show,
}


def _validate(args: argparse.Namespace, config: Config) -> str | None:
    """What is wrong with the arguments (before anything is opened), or None."""
    if args.signal_command == "list":
        if args.account is not None and args.account not in config.accounts:
            known = ", ".join(sorted(config.accounts)) or "none"
            return f"--account {args.account!r}: no such account in the config (known: {known})"
        from ops.commands.gaps import listing_problem

        if (problem := listing_problem(args.since, args.limit)) is not None:
            return problem
    if args.signal_command == "show":
        try:
            parse_id(args.id)
        except BadArgument as exc:
            return str(exc)
    return None


async def _run(env: RuntimeEnv, config: Config, args: argparse.Namespace) -> int:
    from ops.commands.status import oneshot_store_settings
    from ops.runtime.env import current_user

    # Short timeouts: an outage costs seconds, not the roles' patient defaults.
    settings = oneshot_store_settings(env, config)
    async with await Store.open(env, process=f"cli:{current_user()}", config=settings) as store:
        return await _HANDLERS[args.signal_command](store, args)


def cli_signal(args: argparse.Namespace) -> int:
    """`ops signal list` and `ops signal show`."""
    command = f"signal {args.signal_command}"
    try:
        env, config = load_runtime_config()
    except ConfigError as exc:
        return _fail(command, str(exc), EXIT_CONFIG)
    problem = _validate(args, config)
    if problem is not None:
        return _fail(command, problem)
    from ops.runtime.logs import configure_logging

    # Errors are said once, here; the store's outage warnings would only repeat them.
    configure_logging("ops-signal", level="CRITICAL")
    try:
        return asyncio.run(_run(env, config, args))
    except BadArgument as exc:
        return _fail(command, str(exc))
    except Unreachable as exc:
        return _fail(command, str(exc), code=1)
