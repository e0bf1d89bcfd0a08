"""Option contract metadata: GET /v2/options/contracts[/{symbol}] on the simulator.

Contracts are synthesised: weekly Friday expiries and strikes around the underlying's
live price (21 strikes per expiry and right). Only what alpaca-py's `OptionContract`
needs, plus a model close price.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from ops.sim.market import Market, is_ticker
from ops.sim.occ import OptionSymbol
from ops.sim.wire import ApiError, stable_uuid, unprocessable

STRIKES_EACH_SIDE = 10


def contract_json(market: Market, occ: OptionSymbol) -> dict[str, Any]:
    symbol = str(occ)
    return {
        "id": stable_uuid("asset", symbol),
        "symbol": symbol,
        "name": f"{occ.describe()} (simulated)",
        "status": "active",
        "tradable": True,
        "expiration_date": occ.expiry.isoformat(),
        "root_symbol": occ.underlying,
        "underlying_symbol": occ.underlying,
        "underlying_asset_id": stable_uuid("asset", occ.underlying),
        "type": "call" if occ.right == "C" else "put",
        "style": "american",
        "strike_price": float(occ.strike),
        "size": "100",
        "multiplier": "100",
        "open_interest": None,
        "open_interest_date": None,
        "close_price": str(market.price(symbol)),
        "close_price_date": None,
    }


def _date(q: Mapping[str, str], name: str) -> date | None:
    if not q.get(name):
        return None
    try:
        return date.fromisoformat(q[name])
    except ValueError:
        raise unprocessable(f"invalid {name}: {q[name]!r}") from None


def _strike_step(spot: Decimal) -> Decimal:
    if spot < 50:
        return Decimal(1)
    return Decimal(5) if spot < 500 else Decimal(10)


def list_contracts(market: Market, q: Mapping[str, str]) -> dict[str, Any]:
    raw = q.get("underlying_symbols", "")
    underlyings = [s.strip().upper() for s in raw.split(",") if s.strip()]
    underlyings = underlyings or ["SPY"]
    for u in underlyings:
        if not is_ticker(u):
            raise unprocessable(f"invalid underlying symbol: {u!r}")
    today = market.clock.today()
    exact = _date(q, "expiration_date")
    gte = _date(q, "expiration_date_gte") or today
    lte = _date(q, "expiration_date_lte") or gte + timedelta(days=7)
    right = {"call": "C", "put": "P", None: None}.get(q.get("type"))
    if q.get("type") and right is None:
        raise unprocessable(f"invalid type: {q.get('type')!r}")
    try:
        lo = Decimal(q["strike_price_gte"]) if q.get("strike_price_gte") else None
        hi = Decimal(q["strike_price_lte"]) if q.get("strike_price_lte") else None
        limit = int(q.get("limit", "100"))
        offset = int(base64.urlsafe_b64decode(q["page_token"]).decode()) if q.get(
            "page_token") else 0
    except (ArithmeticError, ValueError, UnicodeDecodeError) as exc:
        raise unprocessable(f"invalid contract query: {exc}") from None
    if not 1 <= limit <= 10_000:
        raise ApiError(422, 40010001, "limit must be between 1 and 10000")
    expiries = [exact] if exact else []
    if not exact:
        day = max(gte, today)
        while day <= lte and len(expiries) < 60:
            if day.weekday() == 4:
                expiries.append(day)
            day += timedelta(days=1)
    out: list[OptionSymbol] = []
    for u in underlyings:
        spot = market.price(u)
        step = _strike_step(spot)
        center = (spot / step).to_integral_value() * step
        for expiry in expiries:
            if expiry < today:
                continue
            for i in range(-STRIKES_EACH_SIDE, STRIKES_EACH_SIDE + 1):
                strike = center + i * step
                if strike <= 0 or (lo is not None and strike < lo) or (
                    hi is not None and strike > hi
                ):
                    continue
                for r in ("C", "P"):
                    if right is None or r == right:
                        out.append(OptionSymbol(u, expiry, r, strike))
    out.sort(key=str)
    page = out[offset: offset + limit]
    token = None
    if offset + limit < len(out):
        token = base64.urlsafe_b64encode(str(offset + limit).encode()).decode()
    return {"option_contracts": [contract_json(market, o) for o in page],
            "next_page_token": token}
