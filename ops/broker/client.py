"""`Broker`: the async facade over alpaca-py's REST clients for one account.

Each call runs the sync alpaca-py client in a worker thread (`asyncio.to_thread`) with a
real timeout (see transport.py) and converts raw JSON into ops.models types (convert.py).

Retry policy, per kind of call (all retries through ops.retry, never alpaca-py's own):
- reads and idempotent calls (get/list, cancel): retried on 429, 5xx, timeouts and
  connection errors, within `BrokerSettings.retry`;
- calls that create orders (close_position, close_all_positions, replace_order): retried
  only on 429, which the broker refuses unprocessed; any other failure propagates;
- submit_order: never re-sent. An ambiguous failure (timeout, connection error, 5xx,
  429) is settled by looking the order up by client_order_id; see `submit_order`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ops.broker import _sdk as sdk
from ops.broker.convert import (
    account_from_raw,
    activity_from_raw,
    as_mapping,
    clock_from_raw,
    fill_from_raw,
    order_from_raw,
    position_from_raw,
)
from ops.broker.errors import (
    AccountMismatchError,
    BrokerApiError,
    BrokerDataError,
    BrokerError,
)
from ops.broker.orders import build_order_request, build_replace_request
from ops.broker.settings import BrokerEndpoints, BrokerSettings
from ops.broker.transport import TokenBucket, harden, is_rate_limited, is_transient, translate
from ops.credentials import Credentials
from ops.models import (
    AccountInfo,
    Bar,
    Clock,
    Fill,
    NonTradeActivity,
    Order,
    OrderRequest,
    Position,
    Quote,
)
from ops.retry import retry

if TYPE_CHECKING:
    from ops.broker.marketdata import MarketData

T = TypeVar("T")
log = logging.getLogger(__name__)

SubmitOutcome = Literal["accepted", "rejected", "unknown"]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What happened to one order submission.

    accepted: the order exists at the broker (`order` set unless its JSON was unreadable).
    rejected: the broker refused it (or it was invalid before sending); nothing was created.
    unknown: no definitive answer and the order was not found by client_order_id (yet).
      It may still appear; re-check with `Broker.settle(client_order_id)`. Re-sending with
      the *same* client_order_id is safe (the broker refuses duplicates); a new id is not.
    """

    outcome: SubmitOutcome
    order: Order | None
    reason: str | None = None
    http_status: int | None = None
    code: int | None = None


@dataclass(frozen=True, slots=True)
class CancelResult:
    """One item of cancel-all (HTTP 207): the order id and the per-order status."""

    order_id: str
    http_status: int
    body: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ClosePositionResult:
    """One item of close-all (HTTP 207): the liquidating order, or why there is none."""

    symbol: str
    http_status: int
    order: Order | None = None
    reason: str | None = None


@dataclass(slots=True)
class BrokerStats:
    """Counters for heartbeats."""

    requests: int = 0
    errors: int = 0
    retries: int = 0


def _aware(name: str, value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} = {value!r}: give a timezone-aware datetime")
    return value


def _check_order_id(order_id: str) -> None:
    try:
        uuid.UUID(order_id)
    except ValueError:
        raise ValueError(f"order id {order_id!r} is not a UUID") from None


def _is_duplicate_cid(err: BrokerApiError) -> bool:
    text = err.reason.lower()
    return (err.http_status == 422 and "client_order_id" in text
            and any(w in text for w in ("unique", "duplicate", "exist")))


class Broker:
    """One account's broker REST access. Build one per (process, account)."""

    def __init__(
        self,
        endpoints: BrokerEndpoints,
        creds: Credentials,
        settings: BrokerSettings | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.account_name = creds.account_name
        self.settings = settings or BrokerSettings()
        self.stats = BrokerStats()
        self._refused: AccountMismatchError | None = None
        s = self.settings
        self._trading = sdk.TradingClient(
            creds.api_key, creds.api_secret, paper=endpoints.paper, raw_data=True,
            url_override=endpoints.rest_url,
        )
        harden(self._trading, s.rest_timeout_s)
        self._creds = creds  # for the market-data clients, made on first use (`market`)
        self._market: MarketData | None = None
        self._bucket = TokenBucket(s.rate_limit_per_min, s.rate_limit_burst)
        self._data_bucket = TokenBucket(s.rate_limit_per_min, s.rate_limit_burst)
        # Bound on the loop side too: requests' read timeout is per socket read, so a
        # server trickling bytes could otherwise hold a call far longer.
        self._call_bound_s = 2 * s.rest_timeout_s + 1.0

    @property
    def market(self) -> MarketData:
        """The market-data half, built on first use: its alpaca-py modules load pandas,
        which roles that never ask for data should not pay for (see `_sdk`)."""
        if self._market is None:
            from ops.broker import _sdk_data
            from ops.broker.marketdata import MarketData

            c, url = self._creds, self.endpoints.data_url
            stock = _sdk_data.StockHistoricalDataClient(
                c.api_key, c.api_secret, raw_data=True, url_override=url)
            option = _sdk_data.OptionHistoricalDataClient(
                c.api_key, c.api_secret, raw_data=True, url_override=url)
            for client in (stock, option):
                harden(client, self.settings.rest_timeout_s)
            self._market = MarketData(self, stock, option, self.settings.data_feed)
        return self._market

    def __repr__(self) -> str:
        return f"Broker(account={self.account_name!r}, rest_url={self.endpoints.rest_url!r})"

    def close(self) -> None:
        """Close the HTTP sessions (idempotent)."""
        self._trading._session.close()
        if self._market is not None:
            self._market.close()

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    async def call(
        self, what: str, fn: Callable[..., T], *args: Any, data: bool = False,
        bound_s: float | None = None,
    ) -> T:
        """One attempt of a sync alpaca-py call in a worker thread; errors translated."""
        await (self._data_bucket if data else self._bucket).acquire()
        self.stats.requests += 1
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(fn, *args), bound_s or self._call_bound_s
            )
        except Exception as exc:
            err = translate(exc, what, self.settings.rest_timeout_s)
            if err is None:
                raise
            self.stats.errors += 1
            raise err from None

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.stats.retries += 1

    async def read(
        self, what: str, fn: Callable[..., T], *args: Any, data: bool = False,
        bound_s: float | None = None,
    ) -> T:
        """An idempotent call, retried on transient failures within settings.retry."""
        return await retry(
            lambda: self.call(what, fn, *args, data=data, bound_s=bound_s),
            policy=self.settings.retry, retry_on=is_transient, what=what,
            on_retry=self._on_retry,
        )

    async def _write(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A call that may create orders: retried only when rate limited (429)."""
        return await retry(
            lambda: self.call(what, fn, *args),
            policy=self.settings.retry, retry_on=is_rate_limited, what=what,
            on_retry=self._on_retry,
        )

    # -- account ------------------------------------------------------------------------

    async def get_account(self) -> AccountInfo:
        return account_from_raw(await self.read("get account", self._trading.get_account))

    async def bind_account(self, expected_account_number: str) -> AccountInfo:
        """Fetch the account; raise AccountMismatchError unless it is the expected one."""
        account = await self.get_account()
        if account.account_number != expected_account_number:
            log.error("account binding refused for %r: expected %s, got %s",
                      self.account_name, expected_account_number, account.account_number)
            # From now on this Broker refuses every call that could trade (Invariant 5),
            # even if a caller ignores the exception.
            self._refused = AccountMismatchError(
                self.account_name, expected_account_number, account.account_number
            )
            raise self._refused
        self._refused = None
        return account

    def _check_bound(self) -> None:
        if self._refused is not None:
            raise self._refused

    async def get_clock(self) -> Clock:
        return clock_from_raw(await self.read("get clock", self._trading.get_clock))

    # -- positions ----------------------------------------------------------------------

    async def list_positions(self) -> list[Position]:
        raw = await self.read("list positions", self._trading.get_all_positions)
        return [position_from_raw(p) for p in _as_list(raw, "positions")]

    async def get_position(self, symbol: str) -> Position | None:
        try:
            raw = await self.read(f"get position {symbol}", self._trading.get_open_position,
                                  symbol)
        except BrokerApiError as e:
            if e.http_status == 404:
                return None
            raise
        return position_from_raw(raw)

    async def close_position(self, symbol: str, qty: Decimal | None = None) -> Order:
        """Liquidate `symbol` (all of it, or `qty`). Not retried except on 429."""
        self._check_bound()
        opts = sdk.ClosePositionRequest(qty=str(qty)) if qty is not None else None
        raw = await self._write(f"close position {symbol}", self._trading.close_position,
                                symbol, opts)
        return order_from_raw(raw)

    async def close_all_positions(self, cancel_orders: bool = True) -> list[ClosePositionResult]:
        self._check_bound()
        raw = await self._write("close all positions", self._trading.close_all_positions,
                                cancel_orders)
        out: list[ClosePositionResult] = []
        for item in _as_list(raw, "close all positions"):
            d = as_mapping(item, "close all positions item")
            status = _status(d.get("status"))
            body = d.get("body")
            symbol = str(d.get("symbol") or "")
            if 200 <= status < 300 and isinstance(body, Mapping):
                out.append(ClosePositionResult(symbol, status, order_from_raw(body)))
            else:
                reason = body.get("message") if isinstance(body, Mapping) else body
                out.append(ClosePositionResult(symbol, status, None, str(reason)))
        return out

    # -- orders -------------------------------------------------------------------------

    async def submit_order(self, req: OrderRequest) -> SubmitResult:
        """Submit once; never re-sent. Raises AccountMismatchError after a failed
        bind_account. Outcomes:

        - 200 -> accepted;
        - 422 "client_order_id must be unique" -> the order exists: looked up and
          returned as accepted;
        - other 4xx -> rejected, with Alpaca's message as reason;
        - timeout, connection error, 5xx, 429 -> settled by a (retried) lookup by
          client_order_id: found -> accepted, else unknown (see SubmitResult).
        """
        cid = req.client_order_id
        self._check_bound()
        try:
            body = build_order_request(req)
        except ValueError as e:  # pydantic's ValidationError is a ValueError
            return SubmitResult("rejected", None, f"invalid order request: {e}")
        what = f"submit order {cid}"
        try:
            raw = await self.call(what, self._trading.submit_order, body)
        except BrokerApiError as e:
            if _is_duplicate_cid(e):
                # An order with this id exists at the broker: return it. If the lookup
                # cannot show it, the answer stays unknown, never "rejected" (that would
                # invite a second order).
                log.info("%s: duplicate client_order_id; looking the order up", what)
                return await self._settle(cid, cause=e)
            if e.http_status is not None and (e.http_status == 429 or e.http_status >= 500):
                log.warning("%s: ambiguous answer (%s); settling by client_order_id", what, e)
                return await self._settle(cid, cause=e)
            return SubmitResult("rejected", None, e.reason, e.http_status, e.code)
        except BrokerError as e:  # no (readable) answer: the request may have been processed
            log.warning("%s: no answer (%s); settling by client_order_id", what, e)
            return await self._settle(cid, cause=e)
        except Exception as e:
            # Unexpected (an alpaca-py bug?): the POST may have gone out, so settle too.
            log.exception("%s: unexpected error; settling by client_order_id", what)
            return await self._settle(
                cid, cause=BrokerError(what, f"unexpected {type(e).__name__}: {e}")
            )
        try:
            return SubmitResult("accepted", order_from_raw(raw), None, 200)
        except BrokerDataError as e:
            return SubmitResult("accepted", None, f"accepted, but the response is unreadable: "
                                f"{e}", 200)

    async def settle(self, client_order_id: str) -> SubmitResult:
        """Re-check an UNKNOWN submission: accepted if the broker has it, else unknown."""
        return await self._settle(client_order_id, cause=None)

    async def _settle(self, cid: str, cause: BrokerError | None) -> SubmitResult:
        status = cause.http_status if cause else None
        code = cause.code if cause else None
        prefix = f"{cause}; " if cause else ""
        try:
            order = await self.get_order_by_client_id(cid)
        except BrokerError as e:
            return SubmitResult("unknown", None, f"{prefix}lookup by client_order_id failed: "
                                f"{e}", status, code)
        if order is not None:
            return SubmitResult("accepted", order, None, status, code)
        return SubmitResult(
            "unknown", None,
            f"{prefix}no order with client_order_id {cid!r} at the broker (yet); it may still "
            "appear: re-check with settle(), do not re-send with a new id",
            status, code,
        )

    async def get_order(self, order_id: str) -> Order | None:
        _check_order_id(order_id)
        try:
            raw = await self.read(f"get order {order_id}", self._trading.get_order_by_id,
                                  order_id, sdk.GetOrderByIdRequest(nested=True))
        except BrokerApiError as e:
            if e.http_status == 404:
                return None
            raise
        return order_from_raw(raw)

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        try:
            raw = await self.read(f"get order by client_order_id {client_order_id}",
                                  self._trading.get_order_by_client_id, client_order_id)
        except BrokerApiError as e:
            if e.http_status == 404:
                return None
            raise
        return order_from_raw(raw)

    async def list_orders(
        self,
        status: str = "all",
        after: datetime | None = None,
        until: datetime | None = None,
        limit: int = 500,
        direction: str = "asc",
        nested: bool = True,
        symbols: Sequence[str] | None = None,
    ) -> list[Order]:
        """All matching orders. Pages of `limit` (max 500) by moving `after` (asc) or
        `until` (desc) to the edge of the last page; overlap is removed by order id."""
        try:
            q_status = sdk.QueryOrderStatus(status)
            sort = sdk.Sort(direction)
        except ValueError as e:
            raise ValueError(f"list_orders: {e}") from None
        if not 1 <= limit <= 500:
            raise ValueError(f"list_orders: limit must be 1..500, got {limit}")
        page_after, page_until = _aware("after", after), _aware("until", until)
        found: dict[str, Order] = {}
        while True:
            req = sdk.GetOrdersRequest(
                status=q_status, limit=limit, after=page_after, until=page_until,
                direction=sort, nested=nested, symbols=list(symbols) if symbols else None,
            )
            raw = _as_list(await self.read("list orders", self._trading.get_orders, req),
                           "orders")
            page = [order_from_raw(o) for o in raw]
            new = [o for o in page if o.id not in found]
            found.update((o.id, o) for o in new)
            if len(page) < limit:
                break
            if not new:
                log.warning("list orders: a page of %d brought nothing new (more than %d "
                            "orders share one submission time?); stopping", limit, limit)
                break
            edge = page[-1].submitted_at or page[-1].created_at
            # after/until are exclusive: step back 1 µs so ties at the edge are not skipped.
            if sort is sdk.Sort.ASC:
                page_after = edge - timedelta(microseconds=1)
            else:
                page_until = edge + timedelta(microseconds=1)
        return list(found.values())

    async def cancel_order(self, order_id: str) -> None:
        """Request a cancel (204). The outcome arrives on the stream.

        Retried like a read: a retry after a lost answer may meet 404/422 (already
        canceled or filled), which propagates as BrokerApiError.
        """
        _check_order_id(order_id)
        await self.read(f"cancel order {order_id}", self._trading.cancel_order_by_id, order_id)

    async def cancel_all_orders(self) -> list[CancelResult]:
        raw = await self.read("cancel all orders", self._trading.cancel_orders)
        out: list[CancelResult] = []
        for item in _as_list(raw, "cancel all orders"):
            d = as_mapping(item, "cancel all orders item")
            body = d.get("body")
            out.append(CancelResult(str(d.get("id")), _status(d.get("status")),
                                    body if isinstance(body, Mapping) else None))
        return out

    async def replace_order(
        self,
        order_id: str,
        qty: Decimal | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
        time_in_force: str | None = None,
        client_order_id: str | None = None,
    ) -> Order:
        """Replace an open order; returns the NEW order. Not retried except on 429."""
        self._check_bound()
        _check_order_id(order_id)
        body = build_replace_request(qty, limit_price, stop_price, time_in_force,
                                     client_order_id)
        raw = await self._write(f"replace order {order_id}",
                                self._trading.replace_order_by_id, order_id, body)
        return order_from_raw(raw)

    # -- fills --------------------------------------------------------------------------

    async def list_fills(
        self, after: datetime | None = None, until: datetime | None = None,
        order_id: str | None = None,
    ) -> list[Fill]:
        """Executions from /v2/account/activities/FILL, oldest first, all pages; with
        `order_id`, that order's only (Alpaca's `order_id` filter, changelog 2026-07-29;
        filtered here too, so a server that ignores the parameter costs pages, not
        correctness)."""
        base: dict[str, Any] = {"direction": "asc", "page_size": 100}
        for name, value in (("after", _aware("after", after)), ("until", _aware("until", until))):
            if value is not None:
                base[name] = value.isoformat()
        if order_id is not None:
            base["order_id"] = order_id
        fills: list[Fill] = []
        token: str | None = None
        while True:
            params = dict(base) if token is None else {**base, "page_token": token}
            raw = _as_list(
                await self.read("list fills", self._trading.get, "/account/activities/FILL",
                                params),
                "fill activities",
            )
            page = [fill_from_raw(item) for item in raw]
            fills.extend(f for f in page if order_id is None or f.order_id == order_id)
            if len(raw) < 100:
                return fills
            token = page[-1].id

    # -- non-trade activities -------------------------------------------------------------

    async def list_activities(
        self, types: Sequence[str], after: datetime | date | None = None,
        until: datetime | date | None = None,
    ) -> list[NonTradeActivity]:
        """Non-trade activities of `types` (OPEXP, OPEXC, OPASN, OPTRD, SPLIT, ...; alpaca-
        wire.md 3.7a) from `GET /v2/account/activities?activity_types=...`, oldest first, all
        pages (`page_token` = the last id seen, as `list_fills`). Converted tolerantly: an
        unknown type is kept verbatim, an item without an id (it could not be applied
        exactly once) is logged and skipped, never a crash. `after`/`until` are Alpaca's
        (exclusive); a date is sent as a date."""
        wanted = [t.strip().upper() for t in types if t.strip()]
        if not wanted:
            raise ValueError("list_activities: give at least one activity type")
        base: dict[str, Any] = {"activity_types": ",".join(wanted), "direction": "asc",
                                "page_size": 100}
        for name, value in (("after", after), ("until", until)):
            if isinstance(value, datetime):
                _aware(name, value)
                base[name] = value.isoformat()
            elif value is not None:
                base[name] = value.isoformat()
        out: list[NonTradeActivity] = []
        seen: set[str] = set()
        token: str | None = None
        while True:
            params = dict(base) if token is None else {**base, "page_token": token}
            raw = _as_list(
                await self.read("list activities", self._trading.get, "/account/activities",
                                params),
                "activities",
            )
            last: str | None = None
            for item in raw:
                try:
                    a = activity_from_raw(item)
                except BrokerDataError as e:
                    log.warning("list activities: item skipped: %s", e)
                    continue
                last = a.id
                if a.id not in seen:
                    seen.add(a.id)
                    out.append(a)
            if len(raw) < 100 or last is None or last == token:
                return out
            token = last

    # -- market data (delegated) --------------------------------------------------------

    async def latest_quotes(self, symbols: Iterable[str]) -> dict[str, Quote]:
        return await self.market.latest_quotes(symbols)

    async def latest_trades(self, symbols: Iterable[str]) -> dict[str, Decimal]:
        """Last trade price per symbol."""
        return await self.market.latest_trades(symbols)

    async def bars(
        self, symbols: Iterable[str], timeframe: str, start: datetime, end: datetime | None = None
    ) -> dict[str, list[Bar]]:
        return await self.market.bars(symbols, timeframe, start, end)


def _status(value: object) -> int:
    """A 207 item's per-item status; 0 when absent or not a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def _as_list(raw: object, what: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BrokerDataError(what, f"expected a JSON array, got {type(raw).__name__}")
    return raw
