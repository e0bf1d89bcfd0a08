"""The stream role: every trade update of one account stored exactly once, `orders` kept
current, and REST backfill for what the WebSocket loses (design.md, "The trade stream
loses events by design"; alpaca-wire.md 4.4 and 6).

- Stream: `TradeStream` updates are queued (each with its `trade_update` op, built on
  arrival) and written by one writer task: whatever is queued, up to BATCH_MAX, in one
  `write_many` = one transaction and one statement (ops/store/ingest.py: events keyed by
  `TradeUpdate.event_key` in arrival order, plus the newest state per order). Batches are
  small when the stream is quiet (latency) and large in a burst (throughput). Unknown
  event names are stored verbatim like any other; they and unreadable frames also open an
  incident, so nothing is dropped silently.
- Backfill after EVERY connect and reconnect (`on_connect`): orders submitted since the
  last seen broker timestamp minus a margin, every open order, orders we (or the `orders`
  table) believed open, and FILL activities since then -> `upsert_orders` + one
  synthesized `fill`/`partial_fill` event per execution. The activity id is
  `<timestamp>::<execution uuid>`; the uuid is the execution id the stream carries, so a
  backfilled execution gets the same `exec:<execution_id>` event key and an execution
  seen both ways is stored once.
  Non-fill events missed while disconnected (new, canceled, ...) are not synthesized: their
  effect is in the order rows; their stream keys hold a timestamp REST does not give.
- Silence check (a ticker every `schedule.stream_check_s`, never market-gated): when no
  update arrived for `broker.stream_silence_s` and orders are open (in memory, or in the
  `orders` table, where the dispatcher records what it submits), ask REST whether any order
  changed beyond what we saw. Only then: incident "stream-silent", backfill, and a forced
  reconnect. A quiet account with nothing open costs no REST call and never alarms; an
  open order that is simply resting does not alarm either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from ops.broker import Broker, BrokerError, TradeStream
from ops.daemon import Service
from ops.models import TERMINAL_ORDER_STATUSES, Fill, Order, TradeUpdate
from ops.roles.runtime import RoleContext, endpoints_for
from ops.store import is_outage
from ops.store.ingest import trade_update_row_op
from ops.store.ops import Op
from ops.ticker import Slot

log = logging.getLogger(__name__)

BACKFILL_MARGIN = timedelta(seconds=60)  # clock skew and in-flight events around last_seen
INITIAL_LOOKBACK = timedelta(days=1)  # first start with nothing stored
# Updates per write in a burst. Larger batches keep one state per order for more of its
# events (a burst updates each order several times): 2,000 -> 5,000 took a 20k burst
# from ~16k to ~19k events/s stored. Quiet streams write much smaller batches.
BATCH_MAX = 5000
KNOWN_KEEP = timedelta(hours=1)  # terminal orders remembered this long past the watermark

_OPEN_SQL = f"""
SELECT id, updated_at FROM orders
WHERE account = $1 AND status NOT IN ({", ".join(f"'{s}'" for s in TERMINAL_ORDER_STATUSES)})
"""
# Events only: `orders` is also written by the dispatcher and the position manager (from
# submit answers and reconciliation), so its timestamps say nothing about which fills
# this role has stored.
_WATERMARK_SQL = "SELECT max(ts) FROM order_events WHERE account = $1"


def fill_execution_id(fill: Fill) -> str:
    """The execution id inside a FILL activity id `<timestamp>::<uuid>` (the whole id if
    it has no `::`)."""
    _, sep, tail = fill.id.partition("::")
    return tail if sep and tail else fill.id


def update_from_fill(fill: Fill, order: Order) -> TradeUpdate:
    """A fill event synthesized from the REST truth; same event_key as the stream's.

    `order` is the order's current state (it may be past this execution)."""
    raw = {"source": "rest-backfill", "activity": {
        "id": fill.id, "type": fill.fill_type, "transaction_time": fill.transaction_time
        .isoformat(), "price": str(fill.price), "qty": str(fill.qty),
        "cum_qty": str(fill.cum_qty), "leaves_qty": str(fill.leaves_qty),
        "order_id": fill.order_id, "symbol": fill.symbol, "side": fill.side,
        "order_status": fill.order_status,
    }}
    return TradeUpdate(event=fill.fill_type, order=order, timestamp=fill.transaction_time,
                       execution_id=fill_execution_id(fill), price=fill.price, qty=fill.qty,
                       position_qty=None, raw=raw)


@dataclass(slots=True)
class StreamStats:
    """Heartbeat counters (plus the TradeStream's own: messages, connects, bad)."""

    updates: int = 0  # trade updates received on the stream
    stored: int = 0  # new order_events rows from the stream
    duplicates: int = 0  # stream events already stored (redelivered, or backfilled first)
    bad: int = 0  # bad messages recorded (unknown events included)
    write_errors: int = 0
    backfills: int = 0
    backfill_errors: int = 0
    backfilled: int = 0  # new order_events rows synthesized by backfill
    backfilled_orders: int = 0
    silence_checks: int = 0  # REST checks made because the stream was quiet
    silent_reconnects: int = 0  # checks that found missed changes


def _short(raw: object, limit: int = 1000) -> str:
    try:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else (
            raw if isinstance(raw, str) else json.dumps(raw, default=str))
    except Exception:
        text = repr(raw)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StreamRole:
    """The stream service: owns the TradeStream, the writer and the backfill."""

    name = "trade-stream"

    def __init__(self, ctx: RoleContext) -> None:
        if ctx.account is None or ctx.broker is None or ctx.credentials is None:
            raise ValueError("the stream role needs an account with a bound broker")
        acct = ctx.account_cfg
        assert acct is not None
        self.ctx = ctx
        self.account = ctx.account
        self.broker: Broker = ctx.broker
        self.stats = StreamStats()
        self.stream = TradeStream(endpoints_for(acct), ctx.credentials, self._on_update,
                                  self._on_bad_message, self._on_connect)
        # Each update with its write, built on arrival: that work then overlaps the
        # writer's wait on Postgres instead of adding to it (None: built by the writer).
        self._queue: list[tuple[TradeUpdate, Op | None]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._backfill_lock = asyncio.Lock()
        self._backfill_needed = False
        self._watermark: datetime | None = None  # newest broker timestamp seen
        self._watermark_loaded = False
        self._known: dict[str, tuple[datetime, bool]] = {}  # order id -> (updated_at, open)
        self._last_update_mono: float | None = None
        # Start of the current quiet period: last update, connect, or clean check.
        self._quiet_since = time.monotonic()
        self._silent_open = False

    # -- heartbeat ------------------------------------------------------------------------

    def counters(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = dict(asdict(self.stats))
        sc = self.stream.counters
        out.update(messages=sc.messages, connects=sc.connects, connect_failures=sc.connect_failures,
                   stream_bad=sc.bad_messages, queued=len(self._queue),
                   open_orders=sum(1 for _, o in self._known.values() if o))
        out["last_event_age_s"] = (-1.0 if self._last_update_mono is None
                                   else round(time.monotonic() - self._last_update_mono, 3))
        return out

    # -- service --------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        # A burst keeps tens of thousands of updates queued, and each full collection
        # walks every object of the process (measured: 40-100 ms pauses, a fifth of the
        # role's CPU in a burst). Freezing what start-up built (modules, clients, config)
        # takes it out of those walks; a larger first generation collects less often.
        # Both are undone on return (roles also run inside test processes).
        thresholds = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)
        try:
            await self._run()
        finally:
            gc.set_threshold(*thresholds)
            gc.unfreeze()

    async def _run(self) -> None:
        await self.stream.start()
        writer = asyncio.create_task(self._writer(), name=f"stream-writer-{self.account}")
        stream_task = self.stream.task
        assert stream_task is not None
        stopper = asyncio.create_task(self._stop.wait())
        requested = False
        try:
            await asyncio.wait({stream_task, writer, stopper}, return_when=asyncio.FIRST_COMPLETED)
            requested = self._stop.is_set()
        finally:
            stopper.cancel()
            await self.stream.stop()
            self._stop.set()
            self._wake.set()
            # The writer flushes what is queued before it returns.
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            raise RuntimeError("stream writer failed") from writer.exception()
        if not requested:
            raise RuntimeError(f"trade stream of {self.account} ended on its own")

    # -- stream callbacks -----------------------------------------------------------------

    async def _on_update(self, update: TradeUpdate) -> None:
        self.stats.updates += 1
        self._last_update_mono = self._quiet_since = time.monotonic()
        try:
            op: Op | None = trade_update_row_op(self.account, update)
        except Exception:
            op = None  # the writer builds it again and reports what is wrong with it
        self._queue.append((update, op))
        self._wake.set()

    async def _on_bad_message(self, raw: object, error: str) -> None:
        self.stats.bad += 1
        event = None
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            event = raw["data"].get("event")
        if error.startswith("unknown event") and isinstance(event, str):
            # Stored as an order event all the same; the incident tells people it exists.
            await self.ctx.incident(
                "stream-unknown-event",
                f"trade update with unknown event {event!r} (stored verbatim): {error}",
                dedupe_key=f"{self.ctx.process}:stream-unknown-event:{event[:64]}")
            return
        digest = hashlib.sha256(_short(raw, 100_000).encode()).hexdigest()[:16]
        await self.ctx.incident(
            "stream-bad-message", f"{error}; message: {_short(raw)}",
            dedupe_key=f"{self.ctx.process}:stream-bad-message:{digest}")

    async def _on_connect(self) -> None:
        self._quiet_since = time.monotonic()
        try:
            await self.backfill("connect")
        except Exception:
            # The check ticker retries; the stream goes on meanwhile.
            log.exception("backfill after connect failed; will retry on the next check")

    # -- writing --------------------------------------------------------------------------

    async def _writer(self) -> None:
        while True:
            if not self._queue:
                if self._stop.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._queue[:BATCH_MAX]
            try:
                await self._store_updates(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stop.is_set():
                    log.exception("stream writer: %d update(s) unwritten at stop", len(batch))
                    return
                await self._write_failed(batch, exc)
                continue
            del self._queue[: len(batch)]

    async def _store_updates(self, batch: Sequence[tuple[TradeUpdate, Op | None]]) -> None:
        store = self.ctx.store
        # Events and the orders' newest states: one transaction, one statement.
        new = await store.write_many(
            [op or trade_update_row_op(self.account, u) for u, op in batch])
        buffered = not store.database_reachable
        self.stats.stored += new
        if not buffered:
            self.stats.duplicates += len(batch) - new
        for u, _ in batch:
            self._note(u.order)
            self._advance(u.timestamp)
        if self._silent_open:
            self._silent_open = False
            await self.ctx.resolve(self.ctx.incident_key("stream-silent"))

    async def _write_failed(self, batch: Sequence[tuple[TradeUpdate, Op | None]],
                            exc: Exception) -> None:
        """Not an outage (the store buffers those): a bug or a row Postgres refuses. Write
        one by one so one bad event cannot hold the rest back; record the ones that fail."""
        self.stats.write_errors += 1
        log.error("stream writer: batch of %d failed (%s: %s); writing one by one",
                  len(batch), type(exc).__name__, exc)
        for u, op in batch:
            try:
                await self._store_updates([(u, op)])
            except Exception as one:
                if is_outage(one):
                    await asyncio.sleep(1.0)
                    return  # keep the batch queued: retried whole
                await self.ctx.incident(
                    "stream-store-failed",
                    f"cannot store {u.event_key}: {type(one).__name__}: {one}; "
                    f"event: {_short(dict(u.raw))}",
                    dedupe_key=f"{self.ctx.process}:stream-store-failed:{u.event_key}")
        del self._queue[: len(batch)]

    # -- what we know -----------------------------------------------------------------------

    def _note(self, order: Order) -> None:
        have = self._known.get(order.id)
        if have is None or order.updated_at >= have[0]:
            self._known[order.id] = (order.updated_at, not order.is_terminal)
        self._advance(order.updated_at)

    def _advance(self, ts: datetime) -> None:
        if self._watermark is None or ts > self._watermark:
            self._watermark = ts

    async def _since(self) -> datetime:
        if not self._watermark_loaded:
            self._watermark_loaded = True
            try:
                stored = await self.ctx.store.pool.fetchval(_WATERMARK_SQL, self.account)
            except Exception as exc:
                if not is_outage(exc):
                    raise
                stored = None
                log.warning("watermark unreadable (Postgres unreachable); backfilling %s",
                            INITIAL_LOOKBACK)
            if stored is not None:
                self._advance(stored)
        if self._watermark is None:
            return datetime.now(UTC) - INITIAL_LOOKBACK
        return self._watermark - BACKFILL_MARGIN

    async def _stored_open(self) -> dict[str, datetime]:
        try:
            rows = await self.ctx.store.pool.fetch(_OPEN_SQL, self.account)
        except Exception as exc:
            if not is_outage(exc):
                raise
            return {}
        return {r["id"]: r["updated_at"] for r in rows}

    # -- backfill -------------------------------------------------------------------------

    async def _rest_orders(self, since: datetime, also: Iterable[str]) -> dict[str, Order]:
        """Orders submitted since `since`, every open order, and the orders in `also`."""
        b = self.broker
        by_id = {o.id: o for o in await b.list_orders(status="all", after=since,
                                                      direction="asc", nested=True)}
        by_id.update((o.id, o) for o in await b.list_orders(status="open", nested=True))
        for oid in sorted(set(also) - set(by_id)):
            order = await b.get_order(oid)
            if order is not None:
                by_id[oid] = order
        return by_id

    async def backfill(self, reason: str) -> int:
        """Store over REST what the stream may have missed; the new event rows."""
        async with self._backfill_lock:
            self._backfill_needed = True
            try:
                n = await self._backfill(reason)
            except (BrokerError, OSError) as exc:
                self.stats.backfill_errors += 1
                log.warning("backfill (%s) failed: %s; retrying on the next check", reason, exc)
                raise
            self._backfill_needed = False
            return n

    async def _backfill(self, reason: str) -> int:
        since = await self._since()
        # Orders believed open (here, or in the table: the dispatcher records its submits,
        # and rows left open before a restart) are refreshed whatever their age.
        believed_open = {oid for oid, (_, is_open) in self._known.items() if is_open}
        believed_open |= set(await self._stored_open())
        orders = await self._rest_orders(since, believed_open)
        fills = await self.broker.list_fills(after=since)
        for oid in sorted({f.order_id for f in fills} - set(orders)):
            order = await self.broker.get_order(oid)
            if order is not None:
                orders[oid] = order
        updates = []
        for f in fills:
            order = orders.get(f.order_id)
            if order is None:
                await self.ctx.incident(
                    "stream-backfill-orphan",
                    f"fill {f.id} refers to order {f.order_id}, which the broker does not "
                    "return; the execution is not stored", dedupe_key=None)
                continue
            updates.append(update_from_fill(f, order))
        store = self.ctx.store
        new = await store.record_trade_updates(self.account, updates) if updates else 0
        if orders:
            await store.upsert_orders(self.account, orders.values())
        for order in orders.values():
            self._note(order)
        for f in fills:
            self._advance(f.transaction_time)
        self.stats.backfills += 1
        self.stats.backfilled += new
        self.stats.backfilled_orders += len(orders)
        self._prune(since)
        log.info("backfill (%s) since %s: %d order(s), %d fill(s), %d new event(s)",
                 reason, since.isoformat(), len(orders), len(fills), new)
        return new

    def _prune(self, since: datetime) -> None:
        cutoff = since - KNOWN_KEEP
        for oid in [k for k, (ts, is_open) in self._known.items() if not is_open and ts < cutoff]:
            del self._known[oid]

    # -- silence --------------------------------------------------------------------------

    async def check(self, slot: Slot) -> None:
        """The check ticker's job: retry a failed backfill; detect a silent stream."""
        if self._backfill_needed and not self._backfill_lock.locked():  # failed earlier
            await self.backfill("retry")
        silence_s = self.ctx.config.broker.stream_silence_s
        quiet_for = time.monotonic() - self._quiet_since
        if quiet_for < silence_s:
            return
        stored_open = await self._stored_open()
        believed_open = {oid for oid, (_, o) in self._known.items() if o} | set(stored_open)
        if not believed_open:
            self._quiet_since = time.monotonic()  # quiet and nothing to expect: fine
            return
        self.stats.silence_checks += 1
        missed = await self._missed(believed_open, stored_open)
        self._quiet_since = time.monotonic()
        if not missed:
            log.info("stream quiet for %.0fs with %d open order(s); REST shows no change",
                     quiet_for, len(believed_open))
            return
        self.stats.silent_reconnects += 1
        self._silent_open = True
        await self.ctx.incident(
            "stream-silent",
            f"no trade update for {quiet_for:.0f}s (bound {silence_s:g}s) while "
            f"{len(believed_open)} order(s) are open; REST shows {len(missed)} change(s) "
            f"the stream did not deliver (orders {', '.join(sorted(missed)[:5])}); "
            "backfilling and forcing a reconnect")
        await self.backfill("silence")
        if not await self.stream.reconnect():
            log.warning("no open stream socket to close; alpaca-py is reconnecting already")

    async def _missed(self, believed_open: set[str], stored_open: dict[str, datetime]
                      ) -> set[str]:
        since = await self._since()
        orders = await self._rest_orders(since, believed_open)
        missed = set()
        for oid, order in orders.items():
            seen = self._known.get(oid)
            seen_at = seen[0] if seen is not None else stored_open.get(oid)
            if seen_at is None or order.updated_at > seen_at:
                missed.add(oid)
        return missed


async def build(ctx: RoleContext) -> Sequence[Service]:
    """The stream role of `ctx.account`: the stream service and its check ticker."""
    role = StreamRole(ctx)
    acct = ctx.account_cfg
    assert acct is not None
    ctx.ticker("stream-check", acct.schedule.stream_check_s, role.check, market_gate=False)
    ctx.add_counters("stream", role.counters)
    return [role]


__all__ = ["StreamRole", "build", "fill_execution_id", "update_from_fill"]
