"""The stream role: every trade update of one account stored exactly once, `orders` kept
current, and REST backfill for what the WebSocket loses (the trade stream
loses events by design: docs/broker-protocol.md 4.4 and 6).

- Stream: `TradeStream` updates are queued (each with its `trade_update` op, built on
  arrival) and written by one writer task: whatever is queued, up to BATCH_MAX, in one
  `write_many` = one transaction and one statement (ops/store/ingest.py: events keyed by
  `TradeUpdate.event_key` in arrival order, plus the newest state per order). Batches are
  small when the stream is quiet (latency) and large in a burst (throughput). Unknown
  event names are stored verbatim like any other; they and unreadable frames also open an
  incident, so nothing is dropped silently.
- Completeness after EVERY connect and reconnect and every `schedule.fill_check_s`
  (ops/roles/fill_check.py): for every order the account touched, the stored fills
  against the broker's `filled_qty`; missing fills fetched from the FILL activities
  whatever their age, stored under the same identity as the stream's (order + cumulative
  quantity, `TradeUpdate.fill_cum`), so a fill seen both ways is stored once; the orders
  written back. Non-fill events missed while disconnected (new, canceled, ...) are not
  synthesized: their effect is in the order rows; their stream keys hold a timestamp REST
  does not give. The check runs as a task of its own beside the check ticker: its REST
  calls never hold up the ticker's slots; `fill_check_age_s` in the heartbeat and a
  `fill-check-failing` incident say when it stops succeeding.
- A check the position manager asks for (`fill_check_requests`, read every stream check)
  when it sees positions the stored fills do not explain: missing fills are recovered
  before a mismatch is blamed on the broker.
- Connectivity (`TradeStream.connectivity()`: connecting / authenticating / connected /
  refused / disconnected) is in the heartbeat (`stream.state`, `stream.down_s`,
  `stream.refusal`, ...: `StreamRole.counters`) and watched by a task of its own, woken at
  every change of state and at the next instant a verdict can change
  (`judge_connectivity`, pure): not connected for `broker.stream_disconnected_s` opens
  `stream-refused` (the broker refused the authentication or the one-per-key connection:
  names the secret id and the broker's reason, never key material) or
  `stream-disconnected`, whether or not orders are open; connected again for
  `broker.stream_settle_s` closes it. `broker.stream_flap_drops` drops within
  `broker.stream_flap_window_s` (quick reconnects, so never down long) opens
  `stream-flapping`, closed once connected with no drop for a window.
- Mute detection by cross-checking REST (docs/broker-protocol.md 6.1: a socket that answers pings
  and delivers nothing): every completeness check lists the account's orders anyway. An
  order the broker changed while this connection was up whose change the stream has not
  delivered (nothing delivered for it as new, and a different status or filled qty; a
  change into a state Alpaca promises no event for, such as `accepted`, never) is held
  against the stream once the change is `broker.stream_silence_s` old: at once if
  it already is, else at that time by the check ticker, from memory, with no REST call.
  Then `stream-silent` opens and a reconnect is forced (its connect check recovers the
  rest). It closes when the stream delivers an update again, or when a check covering a
  full bound of the new connection finds nothing undelivered. To see changes sooner,
  when the stream has been quiet for the bound while orders are open (in memory, or in
  the `orders` table, where the dispatcher records what it submits) a check runs at once
  (the ticker every `schedule.stream_check_s`, never market-gated). A quiet account with
  nothing open costs no extra REST call and never alarms; an open order that is simply
  resting does not alarm either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ops.broker import Broker, BrokerError, TradeStream
from ops.broker.stream import Connectivity, StreamState
from ops.core.config import BrokerConfig
from ops.core.fills import StoredFill, second_copy
from ops.core.models import Order, TradeUpdate
from ops.roles.fill_check import FillChecker, FillCheckResult
from ops.roles.runtime import RoleContext, endpoints_for
from ops.runtime.daemon import Service
from ops.runtime.ticker import Slot
from ops.store import StorageUnavailable
from ops.store import fills as fq
from ops.store.ingest import trade_update_row_op
from ops.store.ops import Op

log = logging.getLogger(__name__)

# Updates per write in a burst. Larger batches keep one state per order for more of its
# events (a burst updates each order several times): 2,000 -> 5,000 took a 20k burst
# from ~16k to ~19k events/s stored. Quiet streams write much smaller batches.
BATCH_MAX = 5000
KNOWN_KEEP = timedelta(hours=1)  # terminal orders remembered this long
CHECK_FAILING_AFTER = 3  # fill-check intervals without a successful check: incident
REQUEST_FRESH = timedelta(minutes=2)  # at start, an older request is taken as answered
# Mute detection: a change this close after the connection opened may predate it on the
# broker's clock (skew, the listen round trip): not held against the stream.
CLOCK_SKEW = timedelta(seconds=1)
WATCH_MAX_S = 5.0  # the connectivity watch re-reads its bounds (hot reload) at least this often
_UNKNOWN = "unknown"  # a connectivity incident a previous run of this process may have left
# Order states Alpaca documents no dependable trade_updates event for: `accepted` (an
# order queued while the market is closed; the event exists only since 2026-07-30),
# `pending_new`, `held` (bracket legs waiting on their parent), `accepted_for_bidding`,
# and the transient `pending_cancel`/`pending_replace` (docs/broker-protocol.md 4.3).
NO_EVENT_PROMISED = frozenset({"accepted", "pending_new", "held", "accepted_for_bidding",
                               "pending_cancel", "pending_replace"})
Streamed = tuple[datetime, str, Decimal]  # what the stream delivered: updated_at, status, qty
# A queued update: its write, the update itself only when that write could not be built
# (the writer builds it again and reports what is wrong), and what the writer notes once it
# is stored: order id, updated_at, open. A burst queues tens of thousands: holding every
# parsed update (its dicts, Decimals, datetimes) until its batch was written made the
# collector walk them all and freed them cold, ~a fifth of the role's CPU per event.
_Queued = tuple[Op | None, TradeUpdate | None, str, datetime, bool]

@dataclass(slots=True)
class StreamStats:
    """Heartbeat counters (plus the TradeStream's own: messages, connects, bad)."""

    updates: int = 0  # trade updates received on the stream
    stored: int = 0  # new order_events rows from the stream
    duplicates: int = 0  # stream events already stored (redelivered, or backfilled first)
    bad: int = 0  # bad messages recorded (unknown events included)
    write_errors: int = 0
    silence_checks: int = 0  # completeness checks asked for: quiet for the bound, orders open
    silent_reconnects: int = 0  # checks that found undelivered changes: reconnect forced


def undelivered(orders: Iterable[Order], streamed: Mapping[str, Streamed], lo: datetime,
                hi: datetime) -> list[Order]:
    """The orders (as the broker lists them) changed within [lo, hi] whose change the
    stream did not deliver (`streamed`: the newest state it delivered per order): nothing
    as new delivered, and what was delivered differs in status or filled qty (an
    `updated_at` that moved alone is not held against the stream). A change into a state
    Alpaca promises no event for (NO_EVENT_PROMISED) is not held against it either."""
    out = []
    for o in orders:
        if not lo <= o.updated_at <= hi or o.status in NO_EVENT_PROMISED:
            continue
        seen = streamed.get(o.id)
        if seen is not None and (seen[0] >= o.updated_at
                                 or (seen[1], seen[2]) == (o.status, o.filled_qty)):
            continue
        out.append(o)
    return sorted(out, key=lambda o: o.updated_at)


@dataclass(frozen=True, slots=True)
class ConnectivityVerdict:
    """What the stream's connectivity calls for now (`judge_connectivity`)."""

    down: str | None  # "stream-refused" / "stream-disconnected": should be open
    settled: bool  # connected for the settle time: a down incident may close
    flapping: bool  # too many drops within the window
    flap_quiet: bool  # connected, no drop within the window: stream-flapping may close
    recent_drops: int  # drops within the window
    recheck_s: float | None  # when the verdict next changes on its own (None: never)


def judge_connectivity(snap: Connectivity, now: float, b: BrokerConfig) -> ConnectivityVerdict:
    """The verdict on `snap` at monotonic `now` under the [broker] bounds."""
    waits: list[float] = []
    down = None
    if not snap.connected:
        down_for = snap.down_for(now)
        if down_for >= b.stream_disconnected_s:
            down = "stream-refused" if snap.refusal is not None else "stream-disconnected"
        else:
            waits.append(b.stream_disconnected_s - down_for)
    settled = snap.connected and snap.state_age(now) >= b.stream_settle_s
    if snap.connected and not settled:
        waits.append(b.stream_settle_s - snap.state_age(now))
    window = b.stream_flap_window_s
    recent = snap.drops_within(window, now)
    if recent:  # the verdict changes when the newest drop leaves the window
        waits.append(window - (now - snap.drop_times[-1]))
    return ConnectivityVerdict(
        down=down, settled=settled, flapping=recent >= b.stream_flap_drops,
        flap_quiet=snap.connected and recent == 0, recent_drops=recent,
        recheck_s=max(0.0, min(waits)) if waits else None)


def _short(raw: object, limit: int = 1000) -> str:
    try:
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else (
            raw if isinstance(raw, str) else json.dumps(raw, default=str))
    except Exception:
        text = repr(raw)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class StreamRole:
    """The stream service: owns the TradeStream, the writer and the fill checks."""

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
                                  self._on_bad_message, self._on_connect,
                                  on_state=self._stream_changed)
        # Each update's write, built on arrival: that work then overlaps the writer's wait
        # on Postgres instead of adding to it (see `_Queued`).
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self.checker = FillChecker(account=self.account, process=ctx.process, store=ctx.store,
                                   broker=self.broker, incident=self._incident,
                                   resolve=ctx.resolve)
        self._check_task: asyncio.Task[None] | None = None
        self._check_reasons: set[str] = set()  # checks asked for, run by the next task
        self._last_check_ok: float | None = None  # monotonic time of the last success
        self._started_mono = time.monotonic()
        self._check_failing = False
        self._request_seen: datetime | None = None  # newest fill_check_requests row acted on
        self._known: dict[str, tuple[datetime, bool]] = {}  # order id -> (updated_at, open)
        self._last_update_mono: float | None = None
        # Start of the current quiet period: last update, connect, or clean check.
        self._quiet_since = time.monotonic()
        # Open incidents of this process (a previous run may have left some: closed once
        # their condition is seen clear).
        self._silent_open = True
        self._down_open: str | None = _UNKNOWN
        self._flap_open: bool | None = None
        # What the stream itself delivered, per order: (updated_at, status, filled_qty).
        self._streamed: dict[str, Streamed] = {}
        self._connected_wall: datetime | None = None  # when the current connection opened
        self._pending: dict[str, Order] = {}  # changes REST showed, not delivered yet
        self._state_changed = asyncio.Event()

    # -- heartbeat ------------------------------------------------------------------------

    def counters(self) -> dict[str, int | float | str]:
        out: dict[str, int | float | str] = dict(asdict(self.stats))
        sc = self.stream.counters
        out.update(messages=sc.messages, connects=sc.connects, connect_failures=sc.connect_failures,
                   stream_bad=sc.bad_messages, queued=len(self._queue),
                   open_orders=sum(1 for _, o in self._known.values() if o))
        out["last_event_age_s"] = (-1.0 if self._last_update_mono is None
                                   else round(time.monotonic() - self._last_update_mono, 3))
        out.update({f"fill_check_{k}": v for k, v in asdict(self.checker.stats).items()})
        out["fill_check_age_s"] = (-1.0 if self._last_check_ok is None
                                   else round(time.monotonic() - self._last_check_ok, 3))
        out.update(self.connectivity_counters())
        return out

    def connectivity_counters(self) -> dict[str, int | float | str]:
        """The `stream.*` connectivity counters (names and meanings: docs/architecture.md)."""
        snap = self.stream.connectivity()
        now = time.monotonic()
        return {
            "state": snap.state.value,
            "state_age_s": round(snap.state_age(now), 3),
            "down_s": round(snap.down_for(now), 3),
            "refusal": (snap.refusal or "")[:120],
            "last_error": "" if snap.connected else (snap.error or "")[:200],
            "refusals": snap.refusals,
            "drops": snap.drops,
            "drops_recent": snap.drops_within(self.ctx.config.broker.stream_flap_window_s, now),
            "forced_reconnects": snap.forced_reconnects,
        }

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
        watch = asyncio.create_task(self._watch_connectivity(),
                                    name=f"stream-connectivity-{self.account}")
        stream_task = self.stream.task
        assert stream_task is not None
        stopper = asyncio.create_task(self._stop.wait())
        requested = False
        try:
            await asyncio.wait({stream_task, writer, watch, stopper},
                               return_when=asyncio.FIRST_COMPLETED)
            requested = self._stop.is_set()
        finally:
            stopper.cancel()
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await self.stream.stop()
            self._stop.set()
            self._wake.set()
            # The writer flushes what is queued before it returns.
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if self._check_task is not None and not self._check_task.done():
                self._check_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._check_task
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            raise RuntimeError("stream writer failed") from writer.exception()
        if not requested:
            raise RuntimeError(f"trade stream of {self.account} ended on its own")

    # -- stream callbacks -----------------------------------------------------------------

    async def _on_update(self, update: TradeUpdate) -> None:
        self.stats.updates += 1
        self._last_update_mono = self._quiet_since = time.monotonic()
        o = update.order
        seen = self._streamed.get(o.id)
        if seen is None or o.updated_at >= seen[0]:
            self._streamed[o.id] = (o.updated_at, o.status, o.filled_qty)
        try:
            entry: _Queued = (trade_update_row_op(self.account, update), None, o.id,
                              o.updated_at, not o.is_terminal)
        except Exception:  # the writer builds it again and reports what is wrong with it
            entry = (None, update, o.id, o.updated_at, not o.is_terminal)
        self._queue.append(entry)
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
        self.request_check("connect")

    def _stream_changed(self, snap: Connectivity) -> None:
        """TradeStream's `on_state`: note when the connection opened, wake the watch."""
        if snap.state is StreamState.CONNECTED:
            self._connected_wall = datetime.now(UTC)
        else:
            self._connected_wall = None
            self._pending.clear()
        self._state_changed.set()

    # -- connectivity -----------------------------------------------------------------------

    async def _watch_connectivity(self) -> None:
        """Judge connectivity at every change of state and whenever the verdict can next
        change on its own; open and close the connectivity incidents."""
        while True:
            self._state_changed.clear()
            try:
                wait = await self._judge(time.monotonic())
            except Exception:
                log.exception("stream connectivity check failed; trying again")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(WATCH_MAX_S, max(0.05, wait))):
                    await self._state_changed.wait()

    async def _judge(self, now: float) -> float:
        snap = self.stream.connectivity()
        b = self.ctx.config.broker
        v = judge_connectivity(snap, now, b)
        key = f"{self.ctx.process}:stream-connectivity"
        if v.down is not None and v.down != self._down_open:
            if self._down_open is not None:  # its cause changed, or a previous run's
                await self.ctx.resolve(key, (
                    f"the cause changed: now {v.down}" if self._down_open != _UNKNOWN
                    else f"superseded by a new {v.down} report of this process"))
            await self.ctx.incident(v.down, self._down_text(snap, now), dedupe_key=key)
            self._down_open = v.down
        elif v.settled and self._down_open is not None:
            log.info("stream connected again for %gs: closing %s", b.stream_settle_s,
                     self._down_open)
            await self.ctx.resolve(key, f"the trade stream has been connected again for "
                                        f"{b.stream_settle_s:g}s")
            self._down_open = None
        flap_key = f"{self.ctx.process}:stream-flapping"
        if v.flapping and not self._flap_open:
            await self.ctx.incident(
                "stream-flapping",
                f"{self.account}'s trade stream dropped {v.recent_drops} times in the last "
                f"{b.stream_flap_window_s:g}s (bound {b.stream_flap_drops}); it reconnects "
                "each time, but events sent in the gaps depend on the completeness check "
                f"after every reconnect. Latest drop: {snap.last_drop or 'unknown'}",
                dedupe_key=flap_key)
            self._flap_open = True
        elif v.flap_quiet and self._flap_open is not False:
            await self.ctx.resolve(flap_key, f"connected, no drop for "
                                             f"{b.stream_flap_window_s:g}s")
            self._flap_open = False
        return WATCH_MAX_S if v.recheck_s is None else v.recheck_s

    def _down_text(self, snap: Connectivity, now: float) -> str:
        acct = self.ctx.account_cfg
        secret = acct.secret_id if acct is not None else "?"
        down = f"{snap.down_for(now):.0f}s"
        if snap.refusal is not None and snap.refusal_kind == "connection-limit":
            return (f"the broker refused {self.account}'s stream connection: "
                    f"{snap.refusal!r}. Alpaca allows one stream connection per key: another "
                    f"process or program uses the key of secret {secret} (a second stream "
                    "role for this account?), or a closed socket is not reaped yet (~90 s). "
                    f"Not connected for {down}; retrying with backoff")
        if snap.refusal is not None:
            return (f"the broker refused {self.account}'s stream authentication: check the "
                    f"secret {secret} (broker: {snap.refusal!r}; REST may still accept the "
                    f"key). Not connected for {down}, {snap.refusals} refusal(s) since start; "
                    "retrying with backoff")
        return (f"{self.account}'s trade stream has been disconnected for {down} (last "
                f"error: {snap.error or 'none yet'}); retrying with backoff. Fills made "
                "meanwhile are recovered by the completeness check once it reconnects")

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

    async def _store_updates(self, batch: Sequence[_Queued]) -> None:
        store = self.ctx.store
        # Events and the orders' newest states: one transaction, one statement.
        ops = [op if op is not None else self._rebuilt(u) for op, u, _, _, _ in batch]
        new = await store.write_many(ops)
        buffered = not store.database_reachable
        self.stats.stored += new
        if not buffered:
            self.stats.duplicates += len(batch) - new
            if new < len(batch):
                await self._compare_copies(ops)
        known = self._known
        for _, _, oid, updated_at, is_open in batch:
            have = known.get(oid)
            if have is None or updated_at >= have[0]:
                known[oid] = (updated_at, is_open)
        if self._silent_open:
            self._silent_open = False
            await self.ctx.resolve(self.ctx.incident_key("stream-silent"),
                                   "the trade stream delivers updates again")

    async def _compare_copies(self, ops: Sequence[Op]) -> None:
        """Some events of a stored batch were there already: each fill among them is
        compared with the fill stored under its identity (`ops.core.fills.second_copy`);
        a disagreement opens `fill-mismatch`, as the completeness check's own do. The
        stored copy stays: nothing is stored twice. Runs only for batches with duplicates
        (a redelivery, or a fill the check stored from the activities first)."""
        copies: list[tuple[str, str, StoredFill]] = []
        try:
            for op in ops:
                p = op.payload
                if p.get("cum_qty") is None:
                    continue
                copies.append((str(p["order_id"]), str(p["symbol"]), StoredFill(
                    Decimal(p["cum_qty"]), None if p["qty"] is None else Decimal(p["qty"]),
                    None if p["price"] is None else Decimal(p["price"]),
                    datetime.fromisoformat(p["ts"]))))
            if not copies:
                return
            stored = await self.ctx.store.direct(fq.stored_fills, self.account,
                                                 {oid for oid, _, _ in copies})
        except StorageUnavailable:
            return  # compared by nobody: the stored copy stands, as it would anyway
        except Exception:
            log.exception("stream writer: comparing redelivered fills with the stored ones "
                          "failed")
            return
        found: dict[str, list[str]] = {}
        for oid, symbol, copy in copies:
            if problems := second_copy(oid, symbol, copy, stored.get(oid, ())):
                found.setdefault(oid, []).extend(problems)
        for oid, lines in found.items():
            log.warning("stream: %s", "; ".join(lines))
            await self.checker.report_disagreements(oid, lines)

    def _rebuilt(self, update: TradeUpdate | None) -> Op:
        """The write of an update queued without one (its building failed on arrival)."""
        assert update is not None  # queued without its write only together with the update
        return trade_update_row_op(self.account, update)

    async def _write_failed(self, batch: Sequence[_Queued], exc: Exception) -> None:
        """Not an outage (the store buffers those): a bug or a row Postgres refuses. Write
        one by one so one bad event cannot hold the rest back; record the ones that fail."""
        self.stats.write_errors += 1
        log.error("stream writer: batch of %d failed (%s: %s); writing one by one",
                  len(batch), type(exc).__name__, exc)
        for entry in batch:
            try:
                await self._store_updates([entry])
            except StorageUnavailable:
                await asyncio.sleep(1.0)
                return  # keep the batch queued: retried whole
            except Exception as one:
                op, u = entry[0], entry[1]
                if u is not None:
                    key, raw = u.event_key, _short(dict(u.raw))
                else:
                    assert op is not None
                    key, raw = str(op.payload["event_key"]), _short(op.payload["raw"])
                await self.ctx.incident(
                    "stream-store-failed",
                    f"cannot store {key}: {type(one).__name__}: {one}; event: {raw}",
                    dedupe_key=f"{self.ctx.process}:stream-store-failed:{key}")
        del self._queue[: len(batch)]

    # -- what we know -----------------------------------------------------------------------

    def _note(self, order: Order) -> None:
        have = self._known.get(order.id)
        if have is None or order.updated_at >= have[0]:
            self._known[order.id] = (order.updated_at, not order.is_terminal)

    async def _stored_open(self) -> dict[str, datetime]:
        try:
            return await self.ctx.store.direct(fq.stored_open_orders, self.account)
        except StorageUnavailable:
            return {}

    def _prune(self) -> None:
        # Mute detection never looks further back than KNOWN_KEEP (`_after_check`).
        horizon = datetime.now(UTC) - KNOWN_KEEP - CLOCK_SKEW
        for oid in [k for k, (ts, _, _) in self._streamed.items() if ts < horizon]:
            del self._streamed[oid]
        if len(self._known) < 1000:
            return
        newest = max(ts for ts, _ in self._known.values())
        for oid in [k for k, (ts, is_open) in self._known.items()
                    if not is_open and ts < newest - KNOWN_KEEP]:
            del self._known[oid]

    async def _incident(self, kind: str, detail: str, dedupe_key: str) -> None:
        await self.ctx.incident(kind, detail, dedupe_key=dedupe_key)

    # -- fill completeness ----------------------------------------------------------------

    def request_check(self, reason: str) -> None:
        """Run a completeness check as soon as possible (after the one running, if any)."""
        self._check_reasons.add(reason)
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.create_task(self._checks(),
                                                   name=f"fill-check-{self.account}")

    async def _checks(self) -> None:
        while self._check_reasons and not self._stop.is_set():
            reasons, self._check_reasons = self._check_reasons, set()
            reason = "+".join(sorted(reasons))
            try:
                result = await self.checker.run(reason)
            except asyncio.CancelledError:
                raise
            except (BrokerError, OSError) as exc:
                log.warning("fill check (%s) failed: %s; retrying on the next check",
                            reason, exc)
                return
            except StorageUnavailable:
                return
            except Exception:
                log.exception("fill check (%s) failed; retrying on the next check", reason)
                return
            if result.skipped is not None:
                return
            self._last_check_ok = time.monotonic()
            if self._check_failing:
                self._check_failing = False
                await self.ctx.resolve(self.ctx.incident_key("fill-check-failing"),
                                       "a completeness check succeeded again")
            await self._after_check(result)

    async def check_fills(self, reason: str) -> FillCheckResult:
        """One completeness check now, in the caller's task (tests, the silence check)."""
        result = await self.checker.run(reason)
        if result.skipped is None:
            self._last_check_ok = time.monotonic()
        return result

    async def _after_check(self, result: FillCheckResult) -> None:
        """Note what the check learnt; then the mute cross-check (module docstring)."""
        for order in result.orders.values():
            self._note(order)
        self._prune()
        opened = self._connected_wall
        if opened is None or not self.stream.connectivity().connected:
            return  # no connection to judge (the connect check comes after reconnecting)
        silence = timedelta(seconds=self.ctx.config.broker.stream_silence_s)
        lo = max(opened + CLOCK_SKEW, result.started - KNOWN_KEEP)
        hi = result.started - silence
        # Changes not delivered yet: held against the stream once older than the bound
        # (now if they are; else at that time, by the check ticker, without asking REST
        # again: `_pending_due`).
        undelivered = self._undelivered(result.orders.values(), lo, result.started)
        missed = [o for o in undelivered if o.updated_at <= hi]
        self._pending.update((o.id, o) for o in undelivered if o.updated_at > hi)
        if missed:
            await self._silent(missed, result.fills_added)
        elif self._silent_open and hi - lo >= silence and not self._pending:
            log.info("a full %gs of the stream's connection checked: nothing undelivered",
                     silence.total_seconds())
            self._silent_open = False
            await self.ctx.resolve(
                self.ctx.incident_key("stream-silent"),
                f"a completeness check covering {(hi - lo).total_seconds():.0f}s of the "
                "stream's new connection "
                "found every order change delivered")

    async def _pending_due(self) -> None:
        """Changes a check saw that the stream had not delivered yet, now older than the
        bound: still undelivered on the same connection -> the stream is mute."""
        if not self._pending:
            return
        opened = self._connected_wall
        if opened is None or not self.stream.connectivity().connected:
            self._pending.clear()  # the connect check after reconnecting looks again
            return
        silence = timedelta(seconds=self.ctx.config.broker.stream_silence_s)
        hi = datetime.now(UTC) - silence
        due = [o for o in self._pending.values() if o.updated_at <= hi]
        for o in due:
            del self._pending[o.id]
        missed = self._undelivered(due, opened + CLOCK_SKEW, hi)
        if missed:
            await self._silent(missed, None)

    async def _silent(self, missed: Sequence[Order], recovered: int | None) -> None:
        self.stats.silent_reconnects += 1
        self._silent_open = True
        self._pending.clear()  # the reconnect's check looks again
        silence = self.ctx.config.broker.stream_silence_s
        shown = "; ".join(
            f"{o.id} ({o.symbol} {o.status}, filled {o.filled_qty}, at "
            f"{o.updated_at.astimezone(UTC):%H:%M:%S}Z)" for o in missed[:5])
        done = ("the completeness check already wrote the orders back" if recovered is None
                else f"the completeness check recovered {recovered} fill(s) and wrote the "
                     "orders back")
        await self.ctx.incident(
            "stream-silent",
            f"{self.account}'s trade stream is connected but did not deliver "
            f"{len(missed)} order change(s) the REST API shows, older than {silence:g}s: "
            f"{shown}. {done}; forcing a reconnect (and another completeness check)")
        if not await self.stream.reconnect():
            log.warning("no connected stream socket to close; alpaca-py is reconnecting already")

    def _undelivered(self, orders: Iterable[Order], lo: datetime, hi: datetime) -> list[Order]:
        return undelivered(orders, self._streamed, lo, hi)

    async def _requested_check(self) -> None:
        """A check the position manager asked for (positions it cannot explain)."""
        try:
            at = await self.ctx.store.direct(fq.check_requested_at, self.account)
        except StorageUnavailable:
            return
        if at is not None and (self._request_seen is None or at > self._request_seen):
            first = self._request_seen is None
            self._request_seen = at
            if not first or datetime.now(UTC) - at < REQUEST_FRESH:
                self.request_check("requested")

    # -- the check ticker -----------------------------------------------------------------

    async def check(self, slot: Slot) -> None:
        """The check ticker's job: fill checks when due (or failed), undelivered changes
        now past the bound, silence, and the `fill-check-failing` incident. Never waits
        for a fill check to finish."""
        acct = self.ctx.account_cfg
        every = acct.schedule.fill_check_s if acct is not None else 60.0
        now = time.monotonic()
        last = self._last_check_ok if self._last_check_ok is not None else self._started_mono
        if self._last_check_ok is None or now - self._last_check_ok >= every:
            self.request_check("periodic")
        await self._requested_check()
        if now - last >= CHECK_FAILING_AFTER * every and not self._check_failing:
            self._check_failing = True
            await self.ctx.incident(
                "fill-check-failing",
                f"no fill completeness check of {self.account} has succeeded for "
                f"{now - last:.0f}s (every {every:g}s expected): fills the stream missed "
                "are not being recovered; see this process's log")
        await self._pending_due()
        silence_s = self.ctx.config.broker.stream_silence_s
        quiet_for = now - self._quiet_since
        if quiet_for < silence_s:
            return
        believed_open = {oid for oid, (_, o) in self._known.items() if o}
        believed_open |= set(await self._stored_open())
        self._quiet_since = now
        if not believed_open:
            return  # quiet and nothing to expect: fine
        self.stats.silence_checks += 1
        self.request_check("silence")


async def build(ctx: RoleContext) -> Sequence[Service]:
    """The stream role of `ctx.account`: the stream service and its check ticker."""
    role = StreamRole(ctx)
    acct = ctx.account_cfg
    assert acct is not None
    ctx.ticker("stream-check", acct.schedule.stream_check_s, role.check, market_gate=False)
    ctx.add_counters("stream", role.counters)
    return [role]


__all__ = ["ConnectivityVerdict", "StreamRole", "build", "judge_connectivity", "undelivered"]
