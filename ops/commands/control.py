"""Operator commands that write controls and signals: `ops signal add`, `ops pause`,
`ops resume`, `ops positions accept`; `read_kill_switch()` (decoded by ops.core.models, the
one decoding of the 'kill_switch' control); `accept_positions()`, shared with the
dashboard.

Every argument is validated before anything is written; a bad one exits 2 with a message
naming the option and the value at fault (invariant 6). Writes go through the Store, so
they survive a Postgres outage (buffered, replayed when it returns) and say so.
What does not live here: argument parsing (ops/cli.py) and what the roles do with a
kill switch (ops/roles/dispatcher.py, ops.core.risk).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import re
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from ops.core.config import Config, ConfigError
from ops.core.models import KILL_SWITCH_KEY, KillSwitch, OptionSymbol, kill_switch_in
from ops.runtime.config import load_runtime_config
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv, current_user
from ops.store import StorageUnavailable, Store
from ops.store import positions as pq

log = logging.getLogger(__name__)

_TOO_BIG = Decimal(10) ** 12  # no order here is a trillion of anything
#: A US stock ticker: 1-5 letters, optionally a share class ("BRK.B"); as the simulator
#: and the exchanges spell them. Whether it is listed only the broker knows: the dispatcher
#: refuses one without a price, and `ops signal add` waits to say so.
STOCK_SYMBOL = re.compile(r"^[A-Z]{1,5}([./][A-Z]{1,2})?$")

#: `ops signal add` exit codes (ops/cli.py help, README): 2 is a bad argument and 78 a
#: config error (ops.runtime.env.EXIT_CONFIG), as everywhere.
EXIT_SUBMITTED = 0  # the broker took the order (or --no-wait: the signal is recorded)
EXIT_REFUSED = 1  # the dispatcher rejected or expired it; the reason is printed
EXIT_NO_VERDICT = 3  # no final word within --wait (queued, unsettled, or only buffered)
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT) while waiting, as shells report it
#: How often the wait reads the signal's row (one indexed read).
WAIT_POLL_S = 0.2


class UsageError(Exception):
    """A bad command-line argument; the message names it."""


async def read_kill_switch(store: Store, account: str) -> KillSwitch:
    """The account's kill switch from the controls table (OFF when never set; decoded by
    `ops.core.models.kill_switch_from_value`)."""
    return kill_switch_in((await store.controls(account)).rows)


# -- validation ---------------------------------------------------------------------------


def _positive(option: str, text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise UsageError(f"{option} {text!r}: not a number") from None
    if not value.is_finite() or value <= 0:
        raise UsageError(f"{option} {text!r}: must be a finite number > 0")
    if value >= _TOO_BIG:
        raise UsageError(f"{option} {text!r}: must be below {_TOO_BIG:,} (a typo?)")
    return value


def _symbol(text: str) -> str:
    if STOCK_SYMBOL.match(text) or OptionSymbol.parse(text) is not None:
        return text
    hint = f" (did you mean {text.upper()!r}?)" if text.upper() != text else ""
    raise UsageError(f"--symbol {text!r}: not a stock symbol (1-5 letters A-Z with an "
                     f"optional share class, e.g. AAPL, BRK.B) or an OCC option symbol "
                     f"(e.g. AAPL240621C00190000){hint}")


def _account(config: Config, name: str, option: str) -> str:
    if name not in config.accounts:
        known = ", ".join(sorted(config.accounts)) or "none"
        raise UsageError(f"{option} {name!r}: no such account in the config "
                         f"(known: {known})")
    return name


def _within_limits(config: Config, account: str, symbol: str, qty: Decimal | None,
                   qty_text: str | None) -> None:
    """The account's risk limits that refuse a signal whatever the book holds (the
    dispatcher's sanity and options gates, ops.core.risk): refused here, before it is queued."""
    risk = config.accounts[account].risk
    where = f"[accounts.{account}.risk]"
    if qty is not None and qty > risk.max_qty:
        raise UsageError(f"--qty {qty_text!r}: above {account}'s max_qty {risk.max_qty} "
                         f"({where} max_qty in the config); the dispatcher would refuse it")
    if OptionSymbol.parse(symbol) is None:
        return
    if not risk.allow_options:
        raise UsageError(f"--symbol {symbol!r}: an option, and {account} does not trade "
                         f"options ({where} allow_options = false)")
    if qty is not None and qty != qty.to_integral_value():
        raise UsageError(f"--qty {qty_text!r}: options trade in whole contracts")


def signal_fields(args: argparse.Namespace, config: Config) -> dict[str, Any]:
    """Validated keyword arguments for `Store.insert_signal` (UsageError names the bad one)."""
    account = _account(config, args.account, "--account")
    if not config.accounts[account].enabled:
        raise UsageError(f"--account {account!r}: disabled in the config ([accounts."
                         f"{account}] enabled = false): no dispatcher runs for it")
    symbol = _symbol(args.symbol)
    qty = _positive("--qty", args.qty)
    notional = _positive("--notional", args.notional)
    if (qty is None) == (notional is None):
        raise UsageError("give exactly one of --qty or --notional")
    limit_price = _positive("--limit-price", args.limit_price)
    if args.order_type == "limit" and limit_price is None:
        raise UsageError("--limit-price is required with --type limit")
    if args.order_type != "limit" and limit_price is not None:
        raise UsageError(f"--limit-price {args.limit_price!r}: only for --type limit "
                         f"(got --type {args.order_type})")
    if notional is not None and (args.order_type != "market" or args.tif != "day"):
        raise UsageError(f"--notional {args.notional!r}: only for --type market --tif day "
                         f"(got --type {args.order_type} --tif {args.tif})")
    if notional is not None and OptionSymbol.parse(symbol) is not None:
        raise UsageError(f"--notional {args.notional!r}: options need --qty (contracts)")
    expires_at = None
    if args.expires_in is not None:
        if not math.isfinite(args.expires_in) or args.expires_in <= 0:
            raise UsageError(f"--expires-in {args.expires_in!r}: must be a finite number "
                             "of seconds > 0")
        expires_at = datetime.now(UTC) + timedelta(seconds=args.expires_in)
    if not str(args.strategy).strip():
        raise UsageError("--strategy: must not be empty")
    if args.key is not None and not str(args.key).strip():
        raise UsageError("--key: must not be empty")
    _within_limits(config, account, symbol, qty, args.qty)
    return {
        "account": account, "symbol": symbol, "side": args.side, "qty": qty,
        "notional": notional, "order_type": args.order_type, "limit_price": limit_price,
        "time_in_force": args.tif, "strategy": args.strategy,
        "idempotency_key": args.key, "expires_at": expires_at,
        "reduce_only": bool(getattr(args, "reduce_only", False)),
    }


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"ops {command}: error: {message}", file=sys.stderr)
    return code


def _load(command: str) -> tuple[RuntimeEnv, Config] | int:
    try:
        return load_runtime_config()
    except ConfigError as exc:
        # Its own exit code, as every command's (ops.runtime.env.EXIT_CONFIG): never 2, a bad
        # argument.
        return _fail(command, str(exc), EXIT_CONFIG)


def _load_for_account(command: str, args: argparse.Namespace
                      ) -> tuple[RuntimeEnv, Config, str] | int:
    """The config and the TIER argument's account, or the exit code of the failure (said)."""
    loaded = _load(command)
    if isinstance(loaded, int):
        return loaded
    env, config = loaded
    try:
        return env, config, _account(config, args.account, "TIER")
    except UsageError as exc:
        return _fail(command, str(exc))


async def _open(env: RuntimeEnv, config: Config) -> Store:
    return await Store.open(env, process=f"cli:{current_user()}", config=config)


# -- commands -----------------------------------------------------------------------------


def _wait_s(args: argparse.Namespace) -> float | None:
    """Seconds to wait for the dispatcher's verdict; None with --no-wait."""
    if getattr(args, "no_wait", False):
        return None
    wait = getattr(args, "wait", 30.0)
    if not math.isfinite(wait) or wait < 0:
        raise UsageError(f"--wait {wait!r}: must be a number of seconds >= 0")
    return float(wait)


def cli_signal_add(args: argparse.Namespace) -> int:
    """Insert the signal; then (unless --no-wait) wait for the dispatcher's verdict and
    print it. Exit codes: EXIT_SUBMITTED, EXIT_REFUSED, EXIT_NO_VERDICT; 2 bad input."""
    loaded = _load("signal add")
    if isinstance(loaded, int):
        return loaded
    env, config = loaded
    try:
        fields = signal_fields(args, config)
        wait_s = _wait_s(args)
    except UsageError as exc:
        return _fail("signal add", str(exc))
    from ops.commands import signals as signals_cli

    size = f"{fields['qty']}" if fields["qty"] is not None else f"${fields['notional']}"
    what = (f"{fields['side']} {size} {fields['symbol']} for {fields['account']}"
            + (" (reduce-only)" if fields["reduce_only"] else ""))

    inserted: list[int] = []  # the id, once known (what Ctrl-C during the wait names)

    async def run() -> int:
        store = await _open(env, config)
        try:
            sid = await store.insert_signal(**fields)
            if sid is not None:
                inserted.append(sid)
            if sid is None:
                # Buffered: Postgres is away, or earlier buffered writes must reach it
                # first (the store never lets a new write overtake a buffered one).
                why = ("Postgres is unreachable" if not store.database_reachable
                       else "earlier buffered writes are still being replayed")
                print(f"signal buffered ({what}): {why}; it is inserted once the buffer "
                      "drains (no id yet)" + ("" if wait_s is None else
                                              "; no verdict to wait for"))
                return EXIT_SUBMITTED if wait_s is None else EXIT_NO_VERDICT
            if wait_s is None:
                print(sid)
                print(f"signal {sid}: {what}", file=sys.stderr)
                return EXIT_SUBMITTED
            print(f"signal {sid}: {what}", flush=True)
            rec, error = await signals_cli.await_verdict(store, sid, wait_s, WAIT_POLL_S)
            now = datetime.now(UTC)
            if rec is not None and rec.decided:
                print(signals_cli.verdict_line(rec, now))
                return EXIT_SUBMITTED if rec.state == "submitted" else EXIT_REFUSED
            where = (f"{signals_cli.verdict_line(rec, now)}" if rec is not None
                     else f"not readable ({error})")
            hint = await signals_cli.no_verdict_hint(store, config, fields["account"], now)
            print(f"no verdict within {wait_s:g}s: {where}; {hint}. It stays queued: "
                  f"`ops signal show {sid}` tells what became of it")
            return EXIT_NO_VERDICT
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        # Stopping the wait stops nothing else: the signal is queued for the dispatcher.
        what_of = f"signal {inserted[0]} stays queued for the dispatcher: `ops signal show " \
            f"{inserted[0]}` tells what became of it" if inserted else \
            "the signal may or may not have been inserted: `ops signal list` shows"
        print(f"ops signal add: interrupted while waiting; {what_of}", file=sys.stderr)
        return EXIT_INTERRUPTED


#: What each kill switch mode does, in the words the CLI and the dashboard show.
KILL_SWITCH_MEANING = {
    KillSwitch.OFF: "trading resumes",
    KillSwitch.HALT: "no new entries; exits still allowed",
    KillSwitch.REDUCE_ONLY: "only orders that reduce a position; open entry orders are "
                            "canceled",
    KillSwitch.FLATTEN: "the pipeline's open orders are canceled and the positions it "
                        "manages are closed; external positions (opened by hand or by "
                        "another tool) and their orders are left untouched; no new orders",
    KillSwitch.FLATTEN_ALL: "EVERY open order is canceled and EVERY position is closed, "
                            "external ones (opened by hand or by another tool) included; "
                            "no new orders",
}

FLATTEN_ALL_NEEDS_YES = (
    "--mode flatten-all closes EVERY position, including external ones the pipeline did "
    "not open (opened by hand in Alpaca's UI or by another tool), and cancels every open "
    "order; --mode flatten closes only what the pipeline manages. Add --yes to confirm "
    "flatten-all.")


def _set_kill_switch(command: str, args: argparse.Namespace, mode: KillSwitch) -> int:
    if mode is KillSwitch.FLATTEN_ALL and not getattr(args, "yes", False):
        return _fail(command, FLATTEN_ALL_NEEDS_YES)
    loaded = _load_for_account(command, args)
    if isinstance(loaded, int):
        return loaded
    env, config, account = loaded
    by = f"cli:{current_user()}"

    async def write() -> tuple[KillSwitch, bool]:
        store = await _open(env, config)
        try:
            before = await read_kill_switch(store, account)
            await store.set_control(account, KILL_SWITCH_KEY, {"mode": mode.value}, by=by)
            return before, store.database_reachable
        finally:
            await store.close()

    before, reachable = asyncio.run(write())
    meaning = KILL_SWITCH_MEANING[mode]
    print(f"{account}: kill switch {before.value} -> {mode.value} ({meaning}); set by {by}")
    if not reachable:
        print("note: Postgres is unreachable; the change is buffered and applies when it "
              "returns", file=sys.stderr)
    return 0


def cli_pause(args: argparse.Namespace) -> int:
    return _set_kill_switch("pause", args, KillSwitch(args.mode))


def cli_resume(args: argparse.Namespace) -> int:
    return _set_kill_switch("resume", args, KillSwitch.OFF)


# -- accepting the broker's positions -------------------------------------------------------


class AcceptFailed(Exception):
    """The request could not be recorded (the message says why)."""


async def accept_positions(store: Store, account: str, by: str, within_s: float
                           ) -> tuple[str, pq.AcceptRecord | None]:
    """Ask `account`'s position manager to take the broker's positions as the truth and
    wait up to `within_s` for it to apply the request: (request id, the applied record, or
    None when it was not applied in time; it stays pending and is applied at the next
    sync). Needs Postgres: the baseline and the audit row live there."""
    try:
        accept_id = await store.direct(pq.request_accept, account, by, datetime.now(UTC))
    except StorageUnavailable as exc:
        raise AcceptFailed("Postgres is unreachable: nothing was requested (the "
                           "position manager keeps its baseline in Postgres)") from exc
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        record = await store.direct(pq.accept_record, accept_id)
        if record is not None and record.applied_at is not None:
            return accept_id, record
        if asyncio.get_running_loop().time() >= deadline:
            return accept_id, None
        await asyncio.sleep(0.2)


def describe_accept(record: pq.AcceptRecord) -> list[str]:
    """The audit record as lines: what the database expected, what was accepted."""
    before, after = record.before or {}, record.after or {}
    applied = record.applied_at.isoformat(timespec="seconds") if record.applied_at else "-"
    lines = [f"{record.account}: broker positions accepted (requested by "
             f"{record.requested_by}, applied by {record.applied_by} at {applied})",
             f"  {'SYMBOL':<24} {'DATABASE EXPECTED':>18} {'BROKER (ACCEPTED)':>18}"]
    for symbol in sorted(set(before) | set(after)):
        b, a = before.get(symbol, Decimal(0)), after.get(symbol, Decimal(0))
        mark = "" if a == b else "   <- changed"
        lines.append(f"  {symbol:<24} {_num(b):>18} {_num(a):>18}{mark}")
    if not before and not after:
        lines.append("  (no positions on either side)")
    return lines


def _num(x: Decimal) -> str:
    return format(x.normalize(), "f") if x else "0"


def cli_positions_accept(args: argparse.Namespace) -> int:
    command = "positions accept"
    loaded = _load_for_account(command, args)
    if isinstance(loaded, int):
        return loaded
    env, config, account = loaded
    if not math.isfinite(args.wait) or args.wait < 0:
        return _fail(command, f"--wait must be a number of seconds >= 0, got {args.wait}")
    by = f"cli:{current_user()}"

    async def run() -> tuple[str, pq.AcceptRecord | None]:
        store = await _open(env, config)
        try:
            return await accept_positions(store, account, by, args.wait)
        finally:
            await store.close()

    try:
        accept_id, record = asyncio.run(run())
    except AcceptFailed as exc:
        print(f"ops {command}: {account}: {exc}", file=sys.stderr)
        return 1
    if record is None:
        print(f"{account}: accept requested (id {accept_id}, by {by}); the position manager "
              f"has not applied it within {args.wait:g}s. Is {account}-position-manager "
              "running (ops status)? It applies the request at its next sync.",
              file=sys.stderr)
        return 1
    print("\n".join(describe_accept(record)))
    return 0
