"""`Broker`: the async facade over the broker's REST API for one account.

Each call is one blocking HTTP request (transport.Http: our own urllib3 connection pool, not
alpaca-py's clients; transport.py says why) in a worker thread (`asyncio.to_thread`),
with a real timeout, bounded on the loop side too; the raw JSON is converted into
ops.core.models types (convert.py). Endpoints and parameters: docs/broker-protocol.md 3.

Retry policy, per kind of call (all retries through ops.runtime.retry; the transport makes none):
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

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
from ops.broker.marketdata import MarketData
from ops.broker.orders import build_order_request, build_replace_request, dec
from ops.broker.settings import BrokerEndpoints, BrokerSettings
from ops.broker.transport import Http, TokenBucket, is_rate_limited, is_transient, translate
from ops.core.models import (
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
from ops.runtime.credentials import Credentials
from ops.runtime.retry import retry

log = logging.getLogger(__name__)

SubmitOutcome = Literal["accepted", "rejected", "unknown"]
Params = Mapping[str, str]


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


def _segment(value: str) -> str:
    """One path segment (a symbol or an id), percent-encoded."""
    return quote(value, safe="")


def _when(name: str, value: datetime | date) -> str:
    """A query timestamp (aware, with its offset) or a date, as ISO-8601."""
    if isinstance(value, datetime):
        _aware(name, value)
    return value.isoformat()


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
        # One client for the trading and the data host (connections pooled per host).
        self._http = Http(creds.api_key, creds.api_secret, s.rest_timeout_s)
        self._v2 = f"{endpoints.rest_url}/v2"
        self.market = MarketData(self._read_data, endpoints.data_url, s.data_feed)
        self._bucket = TokenBucket(s.rate_limit_per_min, s.rate_limit_burst)
        self._data_bucket = TokenBucket(s.rate_limit_per_min, s.rate_limit_burst)
        # Bound on the loop side too: urllib3's read timeout is per socket read, so a
        # server trickling bytes could otherwise hold a call far longer.
        self._call_bound_s = 2 * s.rest_timeout_s + 1.0

    def __repr__(self) -> str:
        return f"Broker(account={self.account_name!r}, rest_url={self.endpoints.rest_url!r})"

    def close(self) -> None:
        """Close the pooled HTTP connections (idempotent)."""
        self._http.close()

    async def __aenter__(self) -> Broker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    async def call(
        self, what: str, method: str, url: str, *, params: Params | None = None,
        body: Mapping[str, Any] | None = None, data: bool = False,
        bound_s: float | None = None,
    ) -> Any:
        """One HTTP request in a worker thread, paced by the trading or the data budget;
        returns the JSON body (None when empty); errors translated (transport.translate)."""
        await (self._data_bucket if data else self._bucket).acquire()
        self.stats.requests += 1
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._http.request, method, url, params, body),
                bound_s or self._call_bound_s,
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
        self, what: str, method: str, url: str, *, params: Params | None = None,
        data: bool = False, bound_s: float | None = None,
    ) -> Any:
        """An idempotent call, retried on transient failures within settings.retry."""
        return await retry(
            lambda: self.call(what, method, url, params=params, data=data, bound_s=bound_s),
            policy=self.settings.retry, retry_on=is_transient, what=what,
            on_retry=self._on_retry,
        )

    async def _get(self, what: str, path: str, params: Params | None = None) -> Any:
        return await self.read(what, "GET", self._v2 + path, params=params)

    async def _read_data(self, what: str, url: str, params: Params) -> Any:
        """A market-data GET (MarketData's one way out): retried like reads, paced by the
        data budget."""
        return await self.read(what, "GET", url, params=params, data=True)

    async def _write(
        self, what: str, method: str, path: str, *, params: Params | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Any:
        """A call that may create orders: retried only when rate limited (429)."""
        return await retry(
            lambda: self.call(what, method, self._v2 + path, params=params, body=body),
            policy=self.settings.retry, retry_on=is_rate_limited, what=what,
            on_retry=self._on_retry,
        )

    # -- account ------------------------------------------------------------------------

    async def get_account(self) -> AccountInfo:
        return account_from_raw(await self._get("get account", "/account"))

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
        return clock_from_raw(await self._get("get clock", "/clock"))

    # -- positions ----------------------------------------------------------------------

    async def list_positions(self) -> list[Position]:
        raw = await self._get("list positions", "/positions")
        return [position_from_raw(p) for p in _as_list(raw, "positions")]

    async def get_position(self, symbol: str) -> Position | None:
        try:
            raw = await self._get(f"get position {symbol}", f"/positions/{_segment(symbol)}")
        except BrokerApiError as e:
            if e.http_status == 404:
                return None
            raise
        return position_from_raw(raw)

    async def close_position(self, symbol: str, qty: Decimal | None = None) -> Order:
        """Liquidate `symbol` (all of it, or `qty`). Not retried except on 429."""
        self._check_bound()
        params = {"qty": dec(qty)} if qty is not None else None
        raw = await self._write(f"close position {symbol}", "DELETE",
                                f"/positions/{_segment(symbol)}", params=params)
        return order_from_raw(raw)

    async def close_all_positions(self, cancel_orders: bool = True) -> list[ClosePositionResult]:
        self._check_bound()
        raw = await self._write("close all positions", "DELETE", "/positions",
                                params={"cancel_orders": _flag(cancel_orders)})
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
        except ValueError as e:
            return SubmitResult("rejected", None, f"invalid order request: {e}")
        what = f"submit order {cid}"
        try:
            raw = await self.call(what, "POST", f"{self._v2}/orders", body=body)
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
            # Unexpected (a bug of ours?): the POST may have gone out, so settle too.
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
            raw = await self._get(f"get order {order_id}", f"/orders/{_segment(order_id)}",
                                  {"nested": "true"})
        except BrokerApiError as e:
            if e.http_status == 404:
                return None
            raise
        return order_from_raw(raw)

    async def get_order_by_client_id(self, client_order_id: str) -> Order | None:
        try:
            raw = await self._get(f"get order by client_order_id {client_order_id}",
                                  "/orders:by_client_order_id",
                                  {"client_order_id": client_order_id})
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
        if status not in ("open", "closed", "all"):
            raise ValueError(f"list_orders: status = {status!r}: open, closed or all")
        if direction not in ("asc", "desc"):
            raise ValueError(f"list_orders: direction = {direction!r}: asc or desc")
        if not 1 <= limit <= 500:
            raise ValueError(f"list_orders: limit must be 1..500, got {limit}")
        page_after, page_until = _aware("after", after), _aware("until", until)
        found: dict[str, Order] = {}
        base = {"status": status, "limit": str(limit), "direction": direction,
                "nested": _flag(nested)}
        if symbols:
            base["symbols"] = ",".join(symbols)
        while True:
            params = dict(base)
            if page_after is not None:
                params["after"] = page_after.isoformat()
            if page_until is not None:
                params["until"] = page_until.isoformat()
            raw = _as_list(await self._get("list orders", "/orders", params), "orders")
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
            if direction == "asc":
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
        await self.read(f"cancel order {order_id}", "DELETE",
                        f"{self._v2}/orders/{_segment(order_id)}")

    async def cancel_all_orders(self) -> list[CancelResult]:
        raw = await self.read("cancel all orders", "DELETE", f"{self._v2}/orders")
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
        raw = await self._write(f"replace order {order_id}", "PATCH",
                                f"/orders/{_segment(order_id)}", body=body)
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
        base = {"direction": "asc", "page_size": "100"}
        for name, value in (("after", after), ("until", until)):
            if value is not None:
                base[name] = _when(name, value)
        if order_id is not None:
            base["order_id"] = order_id
        fills: list[Fill] = []
        token: str | None = None
        while True:
            params = dict(base) if token is None else {**base, "page_token": token}
            raw = _as_list(await self._get("list fills", "/account/activities/FILL", params),
                           "fill activities")
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
        """Non-trade activities of `types` (OPEXP, OPEXC, OPASN, OPTRD, SPLIT, ...;
        docs/broker-protocol.md 3.7a) from `GET /v2/account/activities?activity_types=...`,
        oldest first, all pages (`page_token` = the last id seen, as `list_fills`).
        Converted tolerantly: an unknown type is kept verbatim, an item without an id (it
        could not be applied exactly once) is logged and skipped, never a crash.
        `after`/`until` are Alpaca's (exclusive); a date is sent as a date."""
        wanted = [t.strip().upper() for t in types if t.strip()]
        if not wanted:
            raise ValueError("list_activities: give at least one activity type")
        base = {"activity_types": ",".join(wanted), "direction": "asc", "page_size": "100"}
        for name, value in (("after", after), ("until", until)):
            if value is not None:
                base[name] = _when(name, value)
        out: list[NonTradeActivity] = []
        seen: set[str] = set()
        token: str | None = None
        while True:
            params = dict(base) if token is None else {**base, "page_token": token}
            raw = _as_list(await self._get("list activities", "/account/activities", params),
                           "activities")
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


def _flag(value: bool) -> str:
    return "true" if value else "false"


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
