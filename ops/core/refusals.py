"""Broker refusals of orders, in words an operator acts on.

What lives here: `Refusal` (what the broker answered: HTTP status, Alpaca's 8-digit code,
its message), `classify()` (which known refusal it is: `Cause`), `explain()` (the cause
named, with status and code, and what to do about it) and `describe()` (the incident
sentence: what was refused — exit, flatten close, protective order — of how much of which
symbol on which account, which order, and `explain()`), plus the refusal incidents' kinds
and dedupe keys. Pure: no I/O. Opening and closing the incidents is
`ops.roles.refusal_incidents`'s.

Secrets: a rejected key (401) is named by the account's configured secret *id* (e.g.
`ops-pipeline/alpaca/tiny`), never by the key or the secret; the broker's message is quoted
only after control characters are removed and it is cut to `MESSAGE_MAX` characters.

The refusals recognised are those of docs/broker-protocol.md section 5 and 3.7a: pattern-day-trading
protection (403 40310100), a rejected key (401), quantity held by open orders (403
"insufficient qty available"), buying power, shorting, options trading level, assets not
tradable, a blocked account, a position the broker does not have (404). Anything else is
quoted verbatim.

`retry_after(refusal, clock)` says when a refused exit is worth sending again: a
pattern-day-trading refusal at the next session open (the position then is no longer
opened "today", so closing it is no longer a day trade); anything else None (retried as
the caller always does, or not at all).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from ops.core.models import Clock
from ops.core.risk import qty_text

#: Incident kinds (one incident per kind and account+symbol; see `dedupe_key`).
EXIT_REFUSED = "exit-refused"  # an exit (position manager's rule, or an exit signal)
FLATTEN_REFUSED = "flatten-refused"  # a close-position request of the flatten kill switch
PROTECTIVE_REFUSED = "protective-refused"  # a protective (stop) order resting at the broker
KINDS = (EXIT_REFUSED, FLATTEN_REFUSED, PROTECTIVE_REFUSED)

MESSAGE_MAX = 300
PDT_CODE = 40310100


class Cause(StrEnum):
    """The refusals an operator handles differently."""

    PDT = "pattern-day-trading"
    KEY_REJECTED = "key-rejected"
    QTY_HELD = "qty-held-by-orders"
    BUYING_POWER = "buying-power"
    NO_SHORTING = "no-shorting"
    OPTIONS_LEVEL = "options-level"
    NOT_TRADABLE = "not-tradable"
    ACCOUNT_BLOCKED = "account-blocked"
    NO_POSITION = "no-position"
    INVALID = "invalid-order"  # refused before it was sent, or 422 for its fields
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Refusal:
    """What the broker answered. `http_status` None: the order was refused before it was
    sent (our own request validation); `code` None: no Alpaca code in the body."""

    http_status: int | None
    code: int | None
    message: str


def dedupe_key(kind: str, account: str, symbol: str) -> str:
    """One open incident per (kind, account, symbol), whichever process sees it."""
    return f"{kind}:{account}:{symbol}"


def key_prefix(kind: str, account: str) -> str:
    """The dedupe keys of `kind` for `account` all start with this."""
    return f"{kind}:{account}:"


def symbol_of_key(kind: str, account: str, key: str | None) -> str | None:
    """The symbol in a dedupe key built by `dedupe_key(kind, account, ...)`, else None."""
    prefix = key_prefix(kind, account)
    if key is None or not key.startswith(prefix) or len(key) == len(prefix):
        return None
    return key[len(prefix):]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_REQUESTED = re.compile(r"requested:\s*([0-9.]+)")
_AVAILABLE = re.compile(r"available:\s*([0-9.]+)")


def clean_message(message: str, limit: int = MESSAGE_MAX) -> str:
    """The broker's message on one line, at most `limit` characters."""
    text = " ".join(_CONTROL.sub(" ", str(message)).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def classify(r: Refusal) -> Cause:
    msg = r.message.lower()
    if r.code == PDT_CODE or "pattern day trad" in msg or "day trading protection" in msg:
        return Cause.PDT
    if r.http_status == 401 or r.code == 40110000:
        return Cause.KEY_REJECTED
    if r.http_status is None:
        return Cause.INVALID
    if ("option" in msg or "covered call" in msg) and any(
            w in msg for w in ("level", "eligib", "not approved", "not permitted",
                               "underlying", "covered")):
        return Cause.OPTIONS_LEVEL
    if "insufficient qty" in msg or "held_for_orders" in msg:
        return Cause.QTY_HELD
    if "buying power" in msg:
        return Cause.BUYING_POWER
    if "not allowed to short" in msg or "shorting" in msg:
        return Cause.NO_SHORTING
    if "blocked" in msg or "suspended" in msg:
        return Cause.ACCOUNT_BLOCKED
    if "not tradable" in msg or "not active" in msg or "halted" in msg:
        return Cause.NOT_TRADABLE
    if r.http_status == 404 and "position" in msg:
        return Cause.NO_POSITION
    if r.http_status == 422:
        return Cause.INVALID
    return Cause.OTHER


def _status_text(r: Refusal) -> str:
    if r.http_status is None:
        return "not sent"
    return f"{r.http_status} {r.code}" if r.code is not None else str(r.http_status)


def explain(r: Refusal, *, symbol: str = "", secret_id: str | None = None) -> str:
    """The cause (with status and code) and what to do, e.g. "pattern-day-trading
    protection (403 40310100): the account is under $25k and ..."."""
    cause = classify(r)
    st = _status_text(r)
    sym = symbol or "the symbol"
    if cause is Cause.PDT:
        return (f"pattern-day-trading protection ({st}): the account is under $25k and this "
                "would be a 4th day trade in 5 days; close it by hand or wait")
    if cause is Cause.KEY_REJECTED:
        where = (f"rotate secret {secret_id} (store a valid key pair under it) and restart "
                 "the account's processes" if secret_id else
                 "rotate the account's secret (store a valid key pair) and restart the "
                 "account's processes")
        return f"the broker rejected the account's API key ({st}): {where}"
    if cause is Cause.QTY_HELD:
        req, avail = _REQUESTED.search(r.message), _AVAILABLE.search(r.message)
        counts = (f" ({req.group(1)} requested, {avail.group(1)} available)"
                  if req and avail else "")
        return (f"insufficient qty ({st}): the shares are held by open orders{counts}; "
                f"cancel the working orders in {sym} or let them finish")
    if cause is Cause.BUYING_POWER:
        return (f"insufficient buying power ({st}): add funds or close it by hand")
    if cause is Cause.NO_SHORTING:
        return (f"the account may not short ({st}): the order sells more than is held; "
                f"check the broker's position in {sym}")
    if cause is Cause.OPTIONS_LEVEL:
        return (f"options trading level ({st}): the account's options level does not allow "
                f"this order ({clean_message(r.message, 120)}); close it by hand or ask the "
                "broker for a higher level")
    if cause is Cause.ACCOUNT_BLOCKED:
        return (f"the account is blocked at the broker ({st}: "
                f"{clean_message(r.message, 120)}); see the broker's dashboard")
    if cause is Cause.NOT_TRADABLE:
        return (f"{sym} is not tradable now ({st}: {clean_message(r.message, 120)}); "
                "close it by hand when it trades again")
    if cause is Cause.NO_POSITION:
        return f"the broker has no position in {sym} ({st}): it is closed already"
    if cause is Cause.INVALID:
        return (f"the order is invalid ({st}): {clean_message(r.message)}; a bug in the "
                "pipeline or its config: report it")
    return f"the broker said ({st}): {clean_message(r.message)}"


def describe(
    r: Refusal,
    *,
    what: str,
    account: str,
    symbol: str,
    qty: Decimal | None,
    side: str | None = None,
    order: str | None = None,
    secret_id: str | None = None,
) -> str:
    """The incident sentence: "the broker refused <what> of <qty> <symbol> (<side>) on
    <account> (order <order>): <explain()>".

    `what` names the order's purpose ("the stop_loss exit", "the flatten close");
    `order` its client_order_id, or how it was requested when it has none.
    """
    amount = f"{qty_text(abs(qty))} " if qty is not None else ""
    parts = [f"the broker refused {what} of {amount}{symbol}"]
    if side:
        parts.append(f" ({side})")
    parts.append(f" on {account}")
    if order:
        parts.append(f" (order {order})")
    return "".join(parts) + ": " + explain(r, symbol=symbol, secret_id=secret_id)


def retry_after(refusal: Refusal, clock: Clock) -> datetime | None:
    """When to send a refused exit again: pattern-day-trading protection -> the next
    session open (`clock.next_open`, the broker's clock read after the refusal); any
    other refusal -> None (no scheduled retry: the caller's usual policy applies).

    Why the next open: the refusal means the exit would be a 4th day trade within 5
    business days, and it is one only because the position was opened the same day. From
    the next session on, closing it is not a day trade, whatever the count. If the clock
    is read while the market is closed before today's open, `next_open` is today's open,
    which is equally a later session than the opening fill's. Pure.
    """
    if classify(refusal) is Cause.PDT:
        return clock.next_open
    return None
