"""The seeded synthetic market: per-symbol random walks, quotes, option prices, bar history.

Determinism: every symbol has its own RNG seeded from (seed, symbol), so asking for a new
symbol never perturbs the others, and `step()` advances every known symbol once. The
engine subscribes to steps (`on_step`) to match orders against the new prices.
Not here: orders, accounts, HTTP.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ops.sim.clock import SimClock
from ops.sim.occ import OptionSymbol
from ops.sim.wire import CENT

DEFAULT_UNIVERSE: dict[str, Decimal] = {
    "AAPL": Decimal("190.00"),
    "MSFT": Decimal("420.00"),
    "SPY": Decimal("520.00"),
    "QQQ": Decimal("440.00"),
    "NVDA": Decimal("120.00"),
    "AMD": Decimal("160.00"),
    "TSLA": Decimal("220.00"),
    "IWM": Decimal("205.00"),
}
_TICKER = re.compile(r"^[A-Z]{1,5}(\.[A-Z])?$")
STEP_SIGMA = 0.001  # per-step log-return volatility of the random walk
OPTION_VOL = 0.30  # annualised volatility used for option time value


class UnknownSymbol(ValueError):
    """The symbol is not a plausible ticker or OCC option symbol."""


class InactiveSymbol(ValueError):
    """A well-formed option symbol whose contract has expired."""


@dataclass(frozen=True, slots=True)
class SimQuote:
    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int
    timestamp: datetime


def digest(*parts: object) -> int:
    text = "/".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _cents(value: Decimal | float) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


def is_ticker(symbol: str) -> bool:
    return bool(_TICKER.match(symbol))


class Market:
    """Prices for stocks (random walk) and options (intrinsic + time value)."""

    def __init__(self, seed: int, clock: SimClock) -> None:
        self.seed = seed
        self.clock = clock
        self.steps = 0
        self._prices: dict[str, Decimal] = {}
        self._lastday: dict[str, Decimal] = {}
        self._rngs: dict[str, random.Random] = {}
        self._option_overrides: dict[str, Decimal] = {}
        self._listeners: list[Callable[[], None]] = []
        self.last_step_at: datetime = clock.now()
        for symbol in DEFAULT_UNIVERSE:
            self._ensure(symbol)

    # -- symbols ---------------------------------------------------------------------------
    def classify(self, symbol: str) -> tuple[str, OptionSymbol | None]:
        """("us_equity", None) or ("us_option", parsed); raises UnknownSymbol/InactiveSymbol."""
        if is_ticker(symbol):
            return "us_equity", None
        occ = OptionSymbol.parse(symbol)
        if occ is None or not is_ticker(occ.underlying) or occ.strike <= 0:
            raise UnknownSymbol(symbol)
        if occ.expiry < self.clock.today():
            raise InactiveSymbol(symbol)
        return "us_option", occ

    def _base_price(self, symbol: str) -> Decimal:
        if symbol in DEFAULT_UNIVERSE:
            return DEFAULT_UNIVERSE[symbol]
        return _cents(20 + (digest(self.seed, "base", symbol) % 38000) / 100)

    def _ensure(self, symbol: str) -> Decimal:
        if symbol not in self._prices:
            base = self._base_price(symbol)
            self._prices[symbol] = base
            self._lastday[symbol] = base
            self._rngs[symbol] = random.Random(digest(self.seed, "walk", symbol))
        return self._prices[symbol]

    # -- stepping --------------------------------------------------------------------------
    def on_step(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def advance(self) -> None:
        """Move every known stock one random-walk step, without notifying listeners."""
        self.steps += 1
        self.last_step_at = self.clock.now()
        for symbol in sorted(self._prices):
            rng = self._rngs[symbol]
            factor = math.exp(rng.gauss(0.0, STEP_SIGMA))
            new = _cents(float(self._prices[symbol]) * factor)
            self._prices[symbol] = max(new, Decimal("0.01"))

    def step(self) -> None:
        """One market step: move prices (only while the market is open, as real prices do),
        then let the engine route, expire and match orders."""
        if self.clock.is_open():
            self.advance()
        for listener in list(self._listeners):
            listener()

    def split(self, symbol: str, ratio: Decimal) -> None:
        """Re-base a stock's prices for a split of `ratio` new shares per old one (last
        and previous close / ratio; the walk goes on from there). ops.sim.corporate."""
        if ratio <= 0:
            raise ValueError(f"split ratio must be > 0, got {ratio}")
        self._ensure(symbol)
        self._prices[symbol] = max(_cents(self._prices[symbol] / ratio), CENT)
        self._lastday[symbol] = max(_cents(self._lastday[symbol] / ratio), CENT)

    def set_price(self, symbol: str, price: Decimal) -> None:
        """Pin a stock's (or option's) price; it keeps walking from there."""
        price = Decimal(price)
        if price <= 0:
            raise ValueError(f"price must be > 0, got {price}")
        kind, _ = self.classify(symbol)
        if kind == "us_option":
            self._option_overrides[symbol] = _cents(price)
        else:
            self._ensure(symbol)
            self._prices[symbol] = _cents(price)

    # -- prices ----------------------------------------------------------------------------
    def _priced(self, symbol: str) -> tuple[str, OptionSymbol | None]:
        """Like `classify`, but an expired contract still has a price (its value at
        expiry): /v2/positions and /v2/account price what is held, and a held option past
        its expiry must never turn them into an HTTP 500. Trading it is still refused
        (`classify`)."""
        try:
            return self.classify(symbol)
        except InactiveSymbol:
            occ = OptionSymbol.parse(symbol)
            assert occ is not None  # InactiveSymbol is only raised for a parsed contract
            return "us_option", occ

    def price(self, symbol: str) -> Decimal:
        """Last trade price (stocks) or model price per share (options)."""
        kind, occ = self._priced(symbol)
        if occ is None:
            return self._ensure(symbol)
        if symbol in self._option_overrides:
            return self._option_overrides[symbol]
        return self._option_price(occ)

    def lastday_price(self, symbol: str) -> Decimal:
        kind, occ = self._priced(symbol)
        if occ is None:
            self._ensure(symbol)
            return self._lastday[symbol]
        return self.price(symbol)

    def _option_price(self, occ: OptionSymbol) -> Decimal:
        spot = float(self._ensure(occ.underlying))
        strike = float(occ.strike)
        days = max((occ.expiry - self.clock.today()).days, 0) + 1
        years = days / 365.0
        intrinsic = max(0.0, spot - strike) if occ.right == "C" else max(0.0, strike - spot)
        if occ.expiry < self.clock.today():
            return _cents(intrinsic)  # expired: worth its exercise value, no time left
        spread = OPTION_VOL * spot * math.sqrt(years)
        moneyness = (spot - strike) / spread if spread > 0 else 0.0
        time_value = 0.4 * spread * math.exp(-0.5 * moneyness * moneyness)
        return max(_cents(intrinsic + time_value), Decimal("0.05"))

    def quote(self, symbol: str) -> SimQuote:
        mid = self.price(symbol)
        kind, _ = self._priced(symbol)
        if kind == "us_option":
            half = max(Decimal("0.05"), _cents(mid * Decimal("0.03"))) / 2
        else:
            half = max(CENT, _cents(mid * Decimal("0.0002")) / 2)
        bid = max(_cents(mid - half), CENT)
        ask = max(_cents(mid + half), bid + CENT)
        size = 1 + digest(self.seed, "size", symbol, self.steps) % 9
        return SimQuote(bid, ask, int(size), int(size) + 1, self.last_step_at)

    def trade_size(self, symbol: str) -> int:
        return int(1 + digest(self.seed, "trade", symbol, self.steps) % 500)

    def historic_price(self, symbol: str, at: datetime, now: datetime) -> Decimal:
        """A smooth deterministic path over absolute time, scaled to end at the live price.

        The shape depends only on (seed, symbol, time), so a bar's relative moves never
        change between requests; only the level follows the live price.
        """
        live = float(self.price(symbol))
        phase = (digest(self.seed, "phase", symbol) % 1000) / 1000 * 2 * math.pi

        def wiggle(ts: datetime) -> float:
            hours = ts.timestamp() / 3600.0
            return 0.01 * math.sin(hours / 3.0 + phase) + 0.02 * math.sin(hours / 40.0 + 2 * phase)

        return max(_cents(live * math.exp(wiggle(at) - wiggle(now))), CENT)

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "prices": {s: str(p) for s, p in self._prices.items()},
            "lastday": {s: str(p) for s, p in self._lastday.items()},
            "option_overrides": {s: str(p) for s, p in self._option_overrides.items()},
        }

    def load_json(self, data: dict[str, Any]) -> None:
        self.steps = int(data.get("steps", 0))
        for symbol, price in dict(data.get("prices", {})).items():
            self._ensure(symbol)
            self._prices[symbol] = Decimal(price)
            # Re-seed so the walk continues deterministically after a restart.
            self._rngs[symbol] = random.Random(digest(self.seed, "walk", symbol, self.steps))
        for symbol, price in dict(data.get("lastday", {})).items():
            self._lastday[symbol] = Decimal(price)
        self._option_overrides = {
            s: Decimal(p) for s, p in dict(data.get("option_overrides", {})).items()
        }

