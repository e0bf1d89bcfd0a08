"""Plain-text formatting shared by the widgets and `ops dash --once`: money, ages, status.

Status is always a word plus a symbol, never colour alone, so a monochrome terminal (and
the text snapshot) reads the same as a colour one. No textual imports here.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from ops.core.gaps import GapStatus

#: The dashboard's status words: gap_status's verdict as the issue names them.
STATUS_WORD: dict[GapStatus, str] = {
    "ok": "ok",
    "late": "late",
    "stalled": "stalled",
    "failing": "failing",
    "idle-market-closed": "idle",
    "paused": "paused",
    "starting": "starting",
    "down": "down",
}
STATUS_SYMBOL: dict[GapStatus, str] = {
    "ok": "✓",
    "late": "!",
    "stalled": "✗",
    "failing": "✗",
    "idle-market-closed": "·",
    "paused": "‖",
    "starting": "…",
    "down": "✗",
}
#: Statuses that need a human: shown in capitals so monochrome terminals shout too.
ALARMING: frozenset[GapStatus] = frozenset({"late", "stalled", "failing", "down"})


def status_text(status: GapStatus) -> str:
    word = STATUS_WORD[status]
    return f"{STATUS_SYMBOL[status]} {word.upper() if status in ALARMING else word}"


def money(v: Decimal | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+,.2f}" if signed else f"{v:,.2f}"


def dollars(v: Decimal | None) -> str:
    """Balances at a glance: whole dollars from 1,000 up (cents below)."""
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.2f}"


def pct(v: Decimal | None) -> str:
    return "-" if v is None else f"{v:+.2f}%"


def qty(v: Decimal | None) -> str:
    if v is None:
        return "-"
    return format(v.normalize(), ",f") if v == v.to_integral_value() else f"{v:,.4f}".rstrip("0")


def owner(held: Decimal, managed: Decimal | None, long: bool = False) -> str:
    """Who owns a position: "managed" (the pipeline's), "external" (opened outside it,
    never sold by exit rules), a mixed one's split ("7m/3x"; long: "7 managed / 3
    external"), or "unknown". Quantities unsigned: the qty column has the sign."""
    if managed is None:
        return "unknown"
    external = held - managed
    if not external:
        return "managed"
    if not managed:
        return "external"
    m, x = qty(abs(managed)), qty(abs(external))
    return f"{m} managed / {x} external" if long else f"{m}m/{x}x"


def price(v: Decimal | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.2f}" if abs(v) >= 1 else f"{v:,.4f}"


def age(seconds: float | None) -> str:
    """Compact age: 4s, 12m, 3h05, 2d04."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}"


def signed_age(seconds: float | None) -> str:
    """How far past due the next run is: "+12s" late; "-" while not due (or unknown).

    A negative "gap" (time left until due) reads like an error on screen; it is not one.
    """
    if seconds is None or seconds < 1:
        return "-"
    return "+" + age(seconds)


def since(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else max(0.0, (now - then).total_seconds())


def clock(ts: datetime | None) -> str:
    return "-" if ts is None else f"{ts:%H:%M:%S}"
