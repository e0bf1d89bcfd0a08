"""Market-data REST on the simulator's origin: latest quotes/trades/bars and historical bars.

Shapes follow docs/broker-protocol.md section 3.8: multi-symbol endpoints keyed by symbol, numbers
as JSON numbers (data models are floats), bars carry `n` and `vw`, an empty bar set is
`{"bars": {}}`, and historical bars page with `next_page_token`. Bars are synthetic but
deterministic (`Market.historic_price`), ending at the live price.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from ops.sim.clock import EASTERN, in_nyse_session
from ops.sim.market import Market, digest
from ops.sim.wire import ApiError, iso_z, parse_time

_TF = re.compile(r"^(\d+)(Min|T|Hour|H|Day|D|Week|W|Month|M)$")
MAX_BUCKETS = 50_000


def bad_request(message: str) -> ApiError:
    # Data errors carry a message but no code (docs/broker-protocol.md section 3.8).
    return ApiError(400, None, message)


def symbols_of(q: Mapping[str, str], market: Market, *, option: bool) -> list[str]:
    raw = [s.strip().upper() for s in q.get("symbols", "").split(",") if s.strip()]
    if not raw:
        raise bad_request("missing symbols")
    for s in raw:
        try:
            kind, _ = market.classify(s)
        except ValueError:
            raise bad_request(f"invalid symbol: {s}") from None
        if (kind == "us_option") != option:
            raise bad_request(f"invalid symbol: {s}")
    return raw


def quote_json(market: Market, symbol: str) -> dict[str, Any]:
    q = market.quote(symbol)
    return {
        "t": iso_z(q.timestamp), "bp": float(q.bid), "bs": q.bid_size, "bx": "V",
        "ap": float(q.ask), "as": q.ask_size, "ax": "V", "c": ["R"], "z": "C",
    }


def trade_json(market: Market, symbol: str) -> dict[str, Any]:
    return {
        "t": iso_z(market.last_step_at), "p": float(market.price(symbol)),
        "s": market.trade_size(symbol), "x": "V", "i": market.steps + 1, "c": ["@"], "z": "C",
    }


def latest_quotes(market: Market, q: Mapping[str, str], option: bool) -> dict[str, Any]:
    return {"quotes": {s: quote_json(market, s) for s in symbols_of(q, market, option=option)}}


def latest_trades(market: Market, q: Mapping[str, str], option: bool) -> dict[str, Any]:
    return {"trades": {s: trade_json(market, s) for s in symbols_of(q, market, option=option)}}


def _timeframe(text: str) -> tuple[int, str]:
    m = _TF.match(text or "")
    if m is None:
        raise bad_request(f"invalid timeframe: {text!r}")
    n, unit = int(m[1]), m[2]
    unit = {"T": "Min", "H": "Hour", "D": "Day", "W": "Week", "M": "Month"}.get(unit, unit)
    if n < 1 or (unit == "Min" and n > 59) or (unit == "Hour" and n > 23) or (
        unit in ("Day", "Week") and n != 1
    ) or (unit == "Month" and n not in (1, 2, 3, 4, 6, 12)):
        raise bad_request(f"invalid timeframe: {text!r}")
    return n, unit


def _step(n: int, unit: str) -> timedelta:
    return {
        "Min": timedelta(minutes=n), "Hour": timedelta(hours=n), "Day": timedelta(days=1),
        "Week": timedelta(weeks=1), "Month": timedelta(days=30 * n),
    }[unit]


def _buckets(start: datetime, end: datetime, n: int, unit: str, nyse: bool) -> list[datetime]:
    step = _step(n, unit)
    if unit in ("Min", "Hour"):
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        t = epoch + step * ((start - epoch) // step)
        if t < start:
            t += step
    else:
        local = start.astimezone(EASTERN)
        t = datetime.combine(local.date(), datetime.min.time(), tzinfo=EASTERN)
        if t < start:
            t += timedelta(days=1)
    out: list[datetime] = []
    scanned = 0
    while t <= end and scanned < MAX_BUCKETS:
        scanned += 1
        if unit in ("Min", "Hour"):
            keep = not nyse or in_nyse_session(t)
        else:
            keep = t.astimezone(EASTERN).weekday() < 5
        if keep:
            out.append(t)
        t += step
    return out


def bar_json(market: Market, symbol: str, t: datetime, step: timedelta,
             now: datetime) -> dict[str, Any]:
    o = market.historic_price(symbol, t, now)
    end = t + step
    c = market.price(symbol) if end >= now else market.historic_price(symbol, end, now)
    h = max(o, c) * Decimal("1.0015")
    low = min(o, c) * Decimal("0.9985")
    v = 1000 + digest(market.seed, "volume", symbol, int(t.timestamp())) % 50_000
    vw = (h + low + c) / 3
    return {
        "t": iso_z(t).replace(".000000Z", "Z"), "o": float(o), "h": round(float(h), 2),
        "l": round(float(low), 2), "c": float(c), "v": v, "n": v // 40 + 1,
        "vw": round(float(vw), 4),
    }


def bars(market: Market, q: Mapping[str, str], nyse: bool) -> dict[str, Any]:
    symbols = symbols_of(q, market, option=False)
    n, unit = _timeframe(q.get("timeframe", ""))
    now = market.clock.now()
    try:
        end = parse_time(q["end"], "end") if q.get("end") else now
        if q.get("start"):
            start = parse_time(q["start"], "start")
        else:
            local = now.astimezone(EASTERN)
            start = datetime.combine(local.date(), datetime.min.time(), tzinfo=EASTERN)
        limit = int(q.get("limit", "1000"))
        offset = int(base64.urlsafe_b64decode(q["page_token"]).decode()) if q.get(
            "page_token") else 0
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(str(exc)) from None
    if not 1 <= limit <= 10_000:
        raise bad_request("invalid limit: must be between 1 and 10000")
    end = min(end, now)
    times = _buckets(start, end, n, unit, nyse) if start <= end else []
    flat = [(s, t) for s in sorted(symbols) for t in times]
    page = flat[offset: offset + limit]
    out: dict[str, list[dict[str, Any]]] = {}
    step = _step(n, unit)
    for s, t in page:
        out.setdefault(s, []).append(bar_json(market, s, t, step, now))
    token = None
    if offset + limit < len(flat):
        token = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
    return {"bars": out, "next_page_token": token}


def latest_bars(market: Market, q: Mapping[str, str]) -> dict[str, Any]:
    now = market.clock.now()
    start = now.replace(second=0, microsecond=0)
    return {
        "bars": {
            s: bar_json(market, s, start, timedelta(minutes=1), now)
            for s in symbols_of(q, market, option=False)
        }
    }


def snapshots(market: Market, q: Mapping[str, str]) -> dict[str, Any]:
    """Top level keyed by symbol (no wrapper key), as Alpaca's stock snapshots."""
    now = market.clock.now()
    minute = now.replace(second=0, microsecond=0)
    local = now.astimezone(EASTERN)
    day = datetime.combine(local.date(), datetime.min.time(), tzinfo=EASTERN)
    prev = day - timedelta(days=3 if local.weekday() == 0 else 1)
    out: dict[str, Any] = {}
    for s in symbols_of(q, market, option=False):
        out[s] = {
            "latestTrade": trade_json(market, s),
            "latestQuote": quote_json(market, s),
            "minuteBar": bar_json(market, s, minute, timedelta(minutes=1), now),
            "dailyBar": bar_json(market, s, day, timedelta(days=1), now),
            "prevDailyBar": bar_json(market, s, prev, timedelta(days=1), now),
        }
    return out
