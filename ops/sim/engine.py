"""The order engine: submit, cancel, replace, close positions, and matching on market steps.

All state changes happen here, synchronously, and each one publishes the matching
`trade_updates` event through the `publish` callback (the stream hub queues it). Fills go
through `_fill`, which also appends the FILL activity, so the stream and
/v2/account/activities/FILL describe the same executions, in Alpaca's documented terms
only: no shared id between the two, and the stream's `price` is the order's average.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ops.sim import corporate, ledger
from ops.sim.accounts import AccountState, OrderState, SimAccountSpec
from ops.sim.clock import SimClock
from ops.sim.market import InactiveSymbol, Market
from ops.sim.occ import OptionSymbol
from ops.sim.orders import (
    NewOrder,
    OrderRefusal,
    not_replaceable,
    parse_new_order,
    parse_replace,
)
from ops.sim.wire import (
    ApiError,
    dec,
    forbidden,
    iso_z,
    not_found,
    parse_decimal,
    stable_uuid,
    unprocessable,
)

log = logging.getLogger(__name__)
Publish = Callable[[str, dict[str, Any]], None]
NOTIONAL_Q = Decimal("0.000000001")


def asset_error(symbol: str, exc: Exception) -> ApiError:
    if isinstance(exc, InactiveSymbol):
        return ApiError(422, 42210000, f"asset {symbol} is not active")
    return ApiError(422, 42210000, f'asset "{symbol}" not found')


class Engine:
    """Broker-side truth for every simulated account."""

    def __init__(
        self,
        specs: list[SimAccountSpec],
        market: Market,
        clock: SimClock,
        *,
        fill_lot: Decimal,
        publish: Publish,
    ) -> None:
        if fill_lot <= 0:
            raise ValueError(f"fill_lot must be > 0, got {fill_lot}")
        self.market = market
        self.clock = clock
        self.fill_lot = fill_lot
        self.publish = publish
        self.dirty = False
        self._seq = 0
        self._last_ts = clock.now()
        self._last_fill = self._last_ts - timedelta(seconds=1)
        self._was_open = clock.is_open()
        self._day = clock.today()
        self.states: dict[str, AccountState] = {}
        self.reject_next: dict[str, int] = {}  # fault: account name or "*" -> count
        self.revoked: set[str] = set()  # fault: accounts whose API key the broker rejects
        self.refuse_next: list[OrderRefusal] = []  # fault: REST-level refusals, in order
        for spec in specs:
            if spec.name in self.states:
                raise ValueError(f"duplicate simulator account name {spec.name!r}")
            self.states[spec.name] = AccountState(spec, spec.cash, spec.cash, created_at=self.now())
        self.by_key = {st.spec.key_id: st for st in self.states.values()}
        if len(self.by_key) != len(self.states):
            raise ValueError("simulator accounts must have distinct key ids")
        market.on_step(self.process)

    # -- basics ----------------------------------------------------------------------------
    def now(self) -> datetime:
        """Strictly increasing timestamps, so (order, event, timestamp) keys never collide."""
        ts = self.clock.now()
        if ts <= self._last_ts:
            ts = self._last_ts + timedelta(microseconds=1)
        self._last_ts = ts
        return ts

    def _fill_time(self) -> datetime:
        """Like now(), but at least 1 ms after the previous fill: activity ids carry
        milliseconds and must sort chronologically."""
        ts = self.now()
        floor = self._last_fill + timedelta(milliseconds=1)
        if ts.replace(microsecond=ts.microsecond // 1000 * 1000) < floor:
            ts = floor
            self._last_ts = ts
        self._last_fill = ts.replace(microsecond=ts.microsecond // 1000 * 1000)
        return ts

    def activity_time(self) -> datetime:
        """The time of a new activity (FILL or non-trade): ids carry milliseconds and
        sort chronologically across both (ops.sim.corporate)."""
        return self._fill_time()

    def authenticate(self, key: str | None, secret: str | None) -> AccountState | None:
        st = self.by_key.get(key or "")
        if st is None or secret is None or not hmac.compare_digest(st.spec.secret, secret):
            return None
        return None if st.spec.name in self.revoked else st

    def _emit(self, st: AccountState, order: OrderState, event: str, ts: datetime,
              **extra: Any) -> None:
        data: dict[str, Any] = {"event": event, "timestamp": iso_z(ts), "order": order.wire()}
        data.update(extra)
        self.dirty = True
        self.publish(st.spec.name, data)

    # -- submit ----------------------------------------------------------------------------
    def submit(self, st: AccountState, body: Mapping[str, Any]) -> OrderState:
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise unprocessable("symbol is required")
        symbol = symbol.upper()
        try:
            asset_class, _ = self.market.classify(symbol)
        except ValueError as exc:
            raise asset_error(symbol, exc) from None
        req = parse_new_order(dict(body) | {"symbol": symbol}, option=asset_class == "us_option")
        if req.client_order_id is not None and req.client_order_id in st.by_client_id:
            raise unprocessable("client_order_id must be unique")
        self._refuse_if_armed(st, req.side, symbol)
        self._check_account(st, req, asset_class)
        return self._create(st, req, asset_class)

    def _refuse_if_armed(self, st: AccountState, side: str, symbol: str) -> None:
        """The `refuse_next_orders` fault: raise the first matching refusal, if any."""
        for rule in self.refuse_next:
            if rule.matches(st.spec.name, side, symbol):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.refuse_next.remove(rule)
                log.info("order %s %s for %s refused (fault): %s %s", side, symbol,
                         st.spec.name, rule.status, rule.message)
                raise rule.error()

    def _check_account(self, st: AccountState, req: NewOrder, asset_class: str,
                       replacing: str | None = None) -> None:
        pos = st.positions.get(req.symbol)
        pos_qty = pos.qty if pos else Decimal(0)
        qty = req.qty
        if req.side == "sell" and qty is not None:
            held = ledger.held_for_orders(st, req.symbol, "sell", exclude=replacing)
            available = max(Decimal(0), pos_qty - held)
            # Writing an option (sell to open) is shorting it: allowed by the options level
            # (ledger.check_option_order: covered calls and cash-secured puts at level 1),
            # never by `shorting_enabled`, which is about shares.
            may_short = pos_qty <= 0 and (
                asset_class == "us_option"
                or (st.spec.shorting_enabled and asset_class == "us_equity"))
            if qty > available and not may_short:
                if pos_qty <= 0 and not st.spec.shorting_enabled and held == 0:
                    raise forbidden("account is not allowed to short")
                raise forbidden(
                    f"insufficient qty available for order (requested: {dec(qty)}, "
                    f"available: {dec(available)})",
                    available=dec(available), existing_qty=dec(pos_qty),
                    held_for_orders=dec(held), symbol=req.symbol,
                )
        quote = self.market.quote(req.symbol)
        mult = ledger.multiplier_of(asset_class)
        if req.notional is not None:
            cost = req.notional
        else:
            assert qty is not None
            touch = quote.ask if req.side == "buy" else quote.bid
            ref = req.limit_price or req.stop_price or touch
            if req.side == "buy":
                opening = qty - max(Decimal(0), -pos_qty)
            else:
                opening = qty - max(Decimal(0), pos_qty)
            occ = OptionSymbol.parse(req.symbol) if asset_class == "us_option" else None
            if occ is not None and req.side == "sell":
                # A written put is cash-secured (its strike, reserved); a written call is
                # covered by shares (checked by the options level), costing nothing more.
                ref = occ.strike if occ.right == "P" else Decimal(0)
            cost = max(Decimal(0), opening) * ref * mult
        if cost <= 0:
            return
        t = ledger.totals(st, self.market, exclude=replacing)
        power = t.options_buying_power if asset_class == "us_option" else t.buying_power
        if cost > power:
            raise forbidden(
                "insufficient buying power",
                buying_power=ledger.money(power), cost_basis=ledger.money(cost),
            )

    def _create(self, st: AccountState, req: NewOrder, asset_class: str,
                replaces: str | None = None) -> OrderState:
        ts = self.now()
        self._seq += 1
        is_open = self.clock.is_open(ts)
        order = OrderState(
            id=str(uuid.uuid4()),
            client_order_id=req.client_order_id or str(uuid.uuid4()),
            account=st.spec.name,
            symbol=req.symbol,
            asset_class=asset_class,
            asset_id=stable_uuid("asset", req.symbol),
            side=req.side,
            type=req.type,
            time_in_force=req.time_in_force,
            status="new" if is_open else "accepted",
            created_at=ts,
            updated_at=ts,
            submitted_at=ts,
            seq=self._seq,
            qty=req.qty,
            notional=req.notional,
            limit_price=req.limit_price,
            stop_price=req.stop_price,
            trail_price=req.trail_price,
            trail_percent=req.trail_percent,
            extended_hours=req.extended_hours,
            position_intent=req.position_intent,
            replaces=replaces,
        )
        if order.type == "trailing_stop":
            self._trail(order)
        st.orders[order.id] = order
        st.by_client_id[order.client_order_id] = order.id
        log.info("order %s %s %s %s -> %s", st.spec.name, order.side, order.qty or order.notional,
                 order.symbol, order.status)
        self._emit(st, order, order.status, ts)
        if self._take_reject(st.spec.name):
            order.reject_pending = True  # rejected "downstream" on the next market step
        elif is_open:
            self._work(st, order, first=True)
        return order

    def _take_reject(self, name: str) -> bool:
        for key in (name, "*"):
            if self.reject_next.get(key, 0) > 0:
                self.reject_next[key] -= 1
                return True
        return False

    def _reject(self, st: AccountState, order: OrderState) -> None:
        ts = self.now()
        order.status, order.failed_at, order.updated_at = "rejected", ts, ts
        order.reject_pending = False
        log.info("order %s rejected (fault)", order.id)
        self._emit(st, order, "rejected", ts)

    # -- matching --------------------------------------------------------------------------
    def process(self) -> None:
        """Called after each market step: route, expire, trigger and fill open orders."""
        now = self.clock.now()
        is_open = self.clock.is_open(now)
        if self.clock.today() != self._day:
            self._day = self.clock.today()
            for st in self.states.values():
                st.last_equity = ledger.totals(st, self.market).equity
        if self._was_open and not is_open and self.clock.mode == "nyse":
            self._expire_day_orders()
        self._was_open = is_open
        # Options past their expiry close are settled (OPEXP / exercise / assignment)
        # before any order is matched: an expired contract must never trade or be priced.
        corporate.process_expiries(self)
        for st in self.states.values():
            for order in sorted(st.orders.values(), key=lambda o: o.seq):
                if order.reject_pending and order.is_open:
                    self._reject(st, order)
                elif not is_open:
                    continue
                elif order.status == "accepted":
                    order.status = "new"
                    order.updated_at = self.now()
                    self._emit(st, order, "new", order.updated_at)
                    self._work(st, order, first=True)
                elif order.status in ("new", "partially_filled"):
                    self._work(st, order, first=False)

    def _expire_day_orders(self) -> None:
        for st in self.states.values():
            for order in list(st.orders.values()):
                if order.is_open and order.time_in_force in ("day", "opg", "cls"):
                    ts = self.now()
                    order.status, order.expired_at, order.updated_at = "expired", ts, ts
                    self._emit(st, order, "expired", ts)

    def expire_order(self, st: AccountState, order: OrderState) -> None:
        """End an open order `expired` (its contract expired: ops.sim.corporate)."""
        ts = self.now()
        order.status, order.expired_at, order.updated_at = "expired", ts, ts
        self._emit(st, order, "expired", ts)

    def _trail(self, order: OrderState) -> None:
        last = self.market.price(order.symbol)
        if order.hwm is None:
            order.hwm = last
        order.hwm = max(order.hwm, last) if order.side == "sell" else min(order.hwm, last)
        if order.trail_price is not None:
            offset = order.trail_price
        else:
            pct = order.trail_percent or Decimal(0)
            offset = (order.hwm * pct / 100).quantize(Decimal("0.01"))
        order.stop_price = order.hwm - offset if order.side == "sell" else order.hwm + offset

    def _executable_price(self, order: OrderState) -> Decimal | None:
        quote = self.market.quote(order.symbol)
        touch = quote.ask if order.side == "buy" else quote.bid
        last = self.market.price(order.symbol)
        if order.type == "trailing_stop":
            self._trail(order)
        if order.type in ("stop", "stop_limit", "trailing_stop") and not order.stop_triggered:
            assert order.stop_price is not None
            hit = last >= order.stop_price if order.side == "buy" else last <= order.stop_price
            if not hit:
                return None
            order.stop_triggered = True
        if order.type in ("limit", "stop_limit"):
            assert order.limit_price is not None
            ok = touch <= order.limit_price if order.side == "buy" else touch >= order.limit_price
            return touch if ok else None
        return touch

    def _work(self, st: AccountState, order: OrderState, *, first: bool) -> None:
        price = self._executable_price(order)
        if order.time_in_force == "fok" and first and (
            price is None or (order.qty is not None and order.remaining > self.fill_lot)
        ):
            self._cancel(st, order)
            return
        if price is not None:
            if order.notional is not None:
                qty = (order.notional / price).quantize(NOTIONAL_Q)
                self._fill(st, order, qty, price, total=qty)
            else:
                self._fill(st, order, min(order.remaining, self.fill_lot), price,
                           total=order.qty or Decimal(0))
        if order.time_in_force == "ioc" and first and order.is_open:
            self._cancel(st, order)

    def _fill(self, st: AccountState, order: OrderState, qty: Decimal, price: Decimal,
              *, total: Decimal) -> None:
        ts = self._fill_time()
        prev = order.filled_qty
        order.filled_qty = prev + qty
        prev_avg = order.filled_avg_price or Decimal(0)
        avg = (prev_avg * prev + price * qty) / order.filled_qty
        avg_price = order.filled_avg_price = avg.quantize(ledger.PRICE_Q).normalize()
        done = order.filled_qty >= total
        order.status = "filled" if done else "partially_filled"
        order.updated_at = ts
        if done:
            order.filled_at = ts
        position_qty = ledger.apply_fill(st, order, qty, price)
        event = "fill" if done else "partial_fill"
        # Alpaca documents the activity id as "<timestamp>::<uuid>" and the stream's
        # execution_id as a uuid, and documents no relation between the two: the two
        # uuids are drawn independently, so nothing downstream can join them.
        st.activities.append({
            "id": f"{ts.strftime('%Y%m%d%H%M%S')}{ts.microsecond // 1000:03d}::{uuid.uuid4()}",
            "activity_type": "FILL",
            "transaction_time": iso_z(ts),
            "type": event,
            "price": dec(price),  # this execution's price
            "qty": dec(qty),
            "side": order.side,
            "symbol": order.symbol,
            "leaves_qty": dec(max(Decimal(0), total - order.filled_qty)),
            "cum_qty": dec(order.filled_qty),
            "order_id": order.id,
            "order_status": order.status,
        })
        # The stream's `price` is documented as "the average price per share at which the
        # order was filled": the order's average after this execution, not this
        # execution's price (that one is only in the FILL activity). Our earlier simulator
        # sent the execution price here; the documentation wins.
        self._emit(st, order, event, ts, execution_id=str(uuid.uuid4()),
                   price=dec(avg_price), qty=dec(qty),
                   position_qty=dec(position_qty))

    # -- queries ---------------------------------------------------------------------------
    def order(self, st: AccountState, order_id: str) -> OrderState:
        order = st.orders.get(order_id)
        if order is None:
            raise not_found("order not found")
        return order

    def order_by_client_id(self, st: AccountState, client_order_id: str) -> OrderState:
        order_id = st.by_client_id.get(client_order_id)
        if order_id is None:
            raise not_found("order not found")
        return st.orders[order_id]

    # -- cancel / replace ------------------------------------------------------------------
    def _cancel(self, st: AccountState, order: OrderState) -> None:
        ts = self.now()
        order.status, order.canceled_at, order.updated_at = "canceled", ts, ts
        self._emit(st, order, "canceled", ts)

    def cancel(self, st: AccountState, order_id: str) -> None:
        order = self.order(st, order_id)
        if not order.is_open:
            raise ApiError(422, 42210000, f"order is not cancelable in status {order.status}")
        self._cancel(st, order)

    def cancel_all(self, st: AccountState) -> list[dict[str, Any]]:
        out = []
        for order in list(st.orders.values()):
            if order.is_open:
                self._cancel(st, order)
                out.append({"id": order.id, "status": 200, "body": None})
        return out

    def replace(self, st: AccountState, order_id: str, body: Mapping[str, Any]) -> OrderState:
        old = self.order(st, order_id)
        if old.status not in ("new", "partially_filled"):
            raise not_replaceable(old.status)
        if old.notional is not None:
            raise unprocessable("notional orders cannot be replaced")
        req = parse_replace(dict(body), option=old.asset_class == "us_option")
        if req.client_order_id is not None and req.client_order_id in st.by_client_id:
            raise unprocessable("client_order_id must be unique")
        qty = req.qty if req.qty is not None else old.remaining
        trail_price, trail_percent = old.trail_price, old.trail_percent
        if req.trail is not None:
            if trail_price is not None:
                trail_price = req.trail
            else:
                trail_percent = req.trail
        new = NewOrder(
            symbol=old.symbol, side=old.side, type=old.type,
            time_in_force=req.time_in_force or old.time_in_force,
            client_order_id=req.client_order_id,
            qty=qty, notional=None,
            limit_price=req.limit_price or old.limit_price,
            stop_price=req.stop_price or old.stop_price,
            trail_price=trail_price, trail_percent=trail_percent,
            extended_hours=old.extended_hours, position_intent=old.position_intent,
        )
        unchanged = (
            new.qty == old.remaining and new.time_in_force == old.time_in_force
            and new.limit_price == old.limit_price and new.stop_price == old.stop_price
            and (trail_price, trail_percent) == (old.trail_price, old.trail_percent)
        )
        if unchanged:
            raise forbidden("order parameters are not changed")
        self._check_account(st, new, old.asset_class, replacing=old.id)
        ts = self.now()
        old.status, old.replaced_at, old.updated_at = "replaced", ts, ts
        replacement = self._build_replacement(st, new, old)
        old.replaced_by = replacement.id
        self._emit(st, old, "replaced", ts)
        return self._start(st, replacement)

    def _build_replacement(self, st: AccountState, req: NewOrder, old: OrderState) -> OrderState:
        ts = self.now()
        self._seq += 1
        order = OrderState(
            id=str(uuid.uuid4()), client_order_id=req.client_order_id or str(uuid.uuid4()),
            account=st.spec.name, symbol=old.symbol, asset_class=old.asset_class,
            asset_id=old.asset_id, side=old.side, type=old.type,
            time_in_force=req.time_in_force,
            status="new" if self.clock.is_open(ts) else "accepted",
            created_at=ts, updated_at=ts, submitted_at=ts, seq=self._seq, qty=req.qty,
            limit_price=req.limit_price, stop_price=req.stop_price,
            trail_price=req.trail_price, trail_percent=req.trail_percent,
            extended_hours=req.extended_hours, position_intent=req.position_intent,
            replaces=old.id,
        )
        st.orders[order.id] = order
        st.by_client_id[order.client_order_id] = order.id
        return order

    def _start(self, st: AccountState, order: OrderState) -> OrderState:
        self._emit(st, order, order.status, order.updated_at)
        if order.status == "new":
            self._work(st, order, first=True)
        return order

    # -- positions -------------------------------------------------------------------------
    def position(self, st: AccountState, symbol: str) -> dict[str, Any]:
        pos = st.positions.get(symbol.upper())
        if pos is None:
            pos = next((p for p in st.positions.values() if p.asset_id == symbol), None)
        if pos is None:
            raise not_found("position does not exist")
        return ledger.position_wire(st, self.market, pos)

    def close_position(self, st: AccountState, symbol: str, q: Mapping[str, str]) -> OrderState:
        symbol = symbol.upper()
        pos = st.positions.get(symbol)
        if pos is None:
            raise not_found("position does not exist")
        try:
            if q.get("qty") and q.get("percentage"):
                raise unprocessable("only one of qty or percentage may be specified")
            if q.get("qty"):
                qty = parse_decimal(q["qty"], "qty")
            elif q.get("percentage"):
                pct = parse_decimal(q["percentage"], "percentage")
                if not 0 < pct <= 100:
                    raise unprocessable("percentage must be between 0 and 100")
                qty = abs(pos.qty) * pct / 100
                if pos.asset_class == "us_option":
                    qty = qty.to_integral_value()
            else:
                qty = abs(pos.qty)
        except ValueError as exc:
            raise unprocessable(str(exc)) from None
        if qty <= 0:
            raise unprocessable("qty must be > 0")
        side = "sell" if pos.qty > 0 else "buy"
        self._refuse_if_armed(st, side, symbol)
        held = ledger.held_for_orders(st, symbol, side)
        available = max(Decimal(0), abs(pos.qty) - held)
        if qty > available:
            raise forbidden(
                f"insufficient qty available for order (requested: {dec(qty)}, "
                f"available: {dec(available)})",
                available=dec(available), existing_qty=dec(pos.qty),
                held_for_orders=dec(held), symbol=symbol,
            )
        req = NewOrder(symbol, side, "market", "day", None, qty, None, None, None, None, None,
                       False, None)
        return self._create(st, req, pos.asset_class)

    def close_all(self, st: AccountState, cancel_orders: bool) -> list[dict[str, Any]]:
        if cancel_orders:
            self.cancel_all(st)
        out: list[dict[str, Any]] = []
        for symbol in sorted(st.positions):
            try:
                order = self.close_position(st, symbol, {})
                out.append({"symbol": symbol, "status": 200, "order_id": order.id,
                            "body": order.wire()})
            except ApiError as err:
                out.append({"symbol": symbol, "status": err.status, "body": err.body()})
        return out

    # -- persistence -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"seq": self._seq, "accounts": {n: s.to_json() for n, s in self.states.items()}}

    def load_json(self, data: Mapping[str, Any]) -> None:
        self._seq = int(data.get("seq", 0))
        for name, raw in dict(data.get("accounts", {})).items():
            if name in self.states:
                self.states[name] = AccountState.from_json(self.states[name].spec, raw)
            else:
                log.warning("state file has unknown account %r; ignored", name)
        self.by_key = {st.spec.key_id: st for st in self.states.values()}

