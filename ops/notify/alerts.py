"""Alerts: sinks (webhook, AWS SNS), the persisted outbox, its delivery worker, the dead-man ping.

Flow: the watchdog turns every incident open/close into an `Alert` and `Outbox.enqueue`s
it: one row per configured sink in a local SQLite file (`$OPS_HOME/alerts.sqlite3`, WAL).
That call only writes a row, so a dead sink can never block the watchdog. `AlertWorker`
(a daemon service) delivers due rows, one task per sink so a slow sink cannot hold up the
others, each attempt bounded by `timeout_s`; a failure is logged, counted and retried
with back-off (the `[alerts.retry]` bounds) until the retry deadline, after which the row
is marked dead, logged as an error and kept for `ops gaps` to show.
Deduplication: one row per (alert id, sink), so the same open/close enqueued twice is
sent once. Rate limit: a token bucket per sink; a row over the limit waits (no attempt
is spent on it).

Why SQLite and not a Postgres table (the first schema had one, `alert_outbox`, dropped by
migration 0010): alerts matter most exactly when Postgres is unreachable, and the
watchdog is the only producer and consumer, on this host. The outbox file survives
watchdog restarts.

`DeadmanPinger` GETs a healthchecks-style URL every `deadman_interval_s` while the stack is
healthy, so a dead host (or a dead watchdog) is noticed from outside by the silence.
Webhook URLs are secrets (they embed tokens): only their host is ever logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol
from urllib.parse import urlsplit

import aiosqlite

from ops.core.backoff import Backoff
from ops.core.config import AlertsConfig
from ops.runtime.errors import summarise_body

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

AlertEvent = Literal["opened", "closed", "update"]


@dataclass(frozen=True, slots=True)
class Alert:
    """One incident event worth telling a human about."""

    event: AlertEvent
    key: str  # the incident's dedupe key (or id)
    kind: str
    process: str | None
    account: str | None
    detail: str
    opened_at: datetime
    duration_s: float | None = None  # closed only
    restarts: int = 0
    host: str = ""

    @property
    def id(self) -> str:
        """Stable id: the same event of the same incident is the same alert (dedupe)."""
        extra = self.detail if self.event == "update" else ""
        raw = f"{self.key}|{self.event}|{self.opened_at.isoformat()}|{extra}"
        return hashlib.sha256(raw.encode()).hexdigest()[:32]

    def text(self) -> str:
        where = self.process or self.account or "the host"
        head = {"opened": "INCIDENT OPEN", "closed": "RESOLVED", "update": "INCIDENT UPDATE"}
        line = f"[ops-pipeline{' ' + self.host if self.host else ''}] {head[self.event]} "
        line += f"{self.kind} on {where}: {self.detail}"
        if self.event == "closed" and self.duration_s is not None:
            line += f" (lasted {self.duration_s:.0f}s, {self.restarts} restart(s))"
        return line

    def body(self) -> dict[str, Any]:
        """Small JSON body: Slack-compatible `text` plus the structured fields."""
        fields = asdict(self)
        fields["opened_at"] = self.opened_at.isoformat()
        return {"text": self.text(), "alert": fields}


class Sink(Protocol):
    name: str  # safe to log

    async def send(self, body: Mapping[str, Any]) -> None:
        """Deliver once; raise on any failure."""
        ...

    async def close(self) -> None: ...


def safe_url(url: str) -> str:
    """scheme://host[:port] only: paths and queries of webhook URLs carry tokens."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def _client_session(timeout_s: float) -> aiohttp.ClientSession:
    """An HTTP client session. aiohttp is imported here, on the first webhook or dead-man
    ping: about 11 MB a process (the watchdog, the monitor) spends only when the config
    names such a URL."""
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s))


class WebhookSink:
    """HTTP POST of the JSON body; any non-2xx status is a failure."""

    def __init__(self, url: str, timeout_s: float, index: int = 0) -> None:
        self.url = url
        self.name = f"webhook{index}:{safe_url(url)}"
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def send(self, body: Mapping[str, Any]) -> None:
        if self._session is None:
            self._session = _client_session(self._timeout_s)
        async with self._session.post(self.url, json=dict(body)) as resp:
            if resp.status // 100 != 2:
                # A proxy's HTML error page is its title, not a page in the log.
                text = summarise_body(await resp.text(), resp.status)[:200]
                raise RuntimeError(f"HTTP {resp.status}: {text}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class SnsSink:
    """AWS SNS publish through boto3 (in a thread; botocore timeouts bound it)."""

    def __init__(self, topic_arn: str, timeout_s: float, endpoint_url: str | None = None) -> None:
        self.topic_arn = topic_arn
        self.name = f"sns:{topic_arn.rsplit(':', 1)[-1]}"
        self._timeout_s = timeout_s
        self._endpoint_url = endpoint_url
        self._client: Any = None

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        region = self.topic_arn.split(":")[3]
        cfg = BotoConfig(connect_timeout=self._timeout_s, read_timeout=self._timeout_s,
                         retries={"max_attempts": 1})
        return boto3.session.Session().client("sns", region_name=region, config=cfg,
                                              endpoint_url=self._endpoint_url)

    def _publish(self, body: Mapping[str, Any]) -> None:
        if self._client is None:
            self._client = self._make_client()
        subject = str(body["text"])[:99]  # SNS subjects are ASCII, < 100 characters
        self._client.publish(
            TopicArn=self.topic_arn,
            Subject=subject.encode("ascii", "replace").decode().replace("\n", " "),
            Message=json.dumps(body, default=str),
        )

    async def send(self, body: Mapping[str, Any]) -> None:
        await asyncio.wait_for(asyncio.to_thread(self._publish, body), 2 * self._timeout_s + 1)

    async def close(self) -> None:
        self._client = None


def sinks_from_config(cfg: AlertsConfig) -> list[Sink]:
    sinks: list[Sink] = [WebhookSink(u, cfg.timeout_s, i) for i, u in enumerate(cfg.webhook_urls)]
    if cfg.sns_topic_arn:
        sinks.append(SnsSink(cfg.sns_topic_arn, cfg.timeout_s))
    return sinks


# --- the outbox ----------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id              TEXT PRIMARY KEY,
    alert_id        TEXT NOT NULL,
    sink            TEXT NOT NULL,
    payload         TEXT NOT NULL,
    created_at      REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    sent_at         REAL,
    dead_at         REAL,
    last_error      TEXT,
    UNIQUE (alert_id, sink)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (next_attempt_at)
    WHERE sent_at IS NULL AND dead_at IS NULL;
"""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: str
    alert_id: str
    sink: str
    payload: dict[str, Any]
    created_at: float
    attempts: int
    next_attempt_at: float
    sent_at: float | None
    dead_at: float | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    pending: int
    sent: int
    dead: int
    oldest_pending_age_s: float | None
    last_error: str | None  # of the newest failed attempt still pending or dead


def default_path(home: Path) -> Path:
    return home / "alerts.sqlite3"


class Outbox:
    """The persisted outbox. `await Outbox.open(path)`; `await outbox.close()`."""

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = asyncio.Lock()  # one statement sequence at a time on the connection
        self.wake = asyncio.Event()

    @classmethod
    async def open(cls, path: Path) -> Outbox:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, timeout=5.0)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.executescript(_SCHEMA)
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        # Payloads name processes and accounts (no secrets); still private to the owner.
        await asyncio.to_thread(path.chmod, 0o600)
        return cls(path, conn)

    async def close(self) -> None:
        await self._conn.close()

    async def enqueue(self, alert: Alert, sinks: Sequence[str], now: float | None = None) -> int:
        """One row per sink; a duplicate (same alert id and sink) is ignored. Rows added."""
        now = time.time() if now is None else now
        payload = json.dumps(alert.body(), default=str)
        added = 0
        async with self._lock:
            for sink in sinks:
                cur = await self._conn.execute(
                    "INSERT OR IGNORE INTO outbox (id, alert_id, sink, payload, created_at,"
                    " next_attempt_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (uuid.uuid4().hex, alert.id, sink, payload, now, now),
                )
                added += cur.rowcount
            await self._conn.commit()
        if added:
            self.wake.set()
        return added

    async def due(self, now: float, limit: int = 100) -> list[OutboxRow]:
        return await self._rows(
            "WHERE sent_at IS NULL AND dead_at IS NULL AND next_attempt_at <= ?"
            " ORDER BY next_attempt_at, created_at LIMIT ?", (now, limit))

    async def rows(self, since: float = 0.0) -> list[OutboxRow]:
        return await self._rows("WHERE created_at >= ? ORDER BY created_at", (since,))

    async def _rows(self, where: str, args: tuple[Any, ...]) -> list[OutboxRow]:
        async with self._lock:
            cur = await self._conn.execute(
                "SELECT id, alert_id, sink, payload, created_at, attempts, next_attempt_at,"
                f" sent_at, dead_at, last_error FROM outbox {where}", args)
            rows = await cur.fetchall()
        return [OutboxRow(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])
                for r in rows]

    async def next_due_at(self) -> float | None:
        async with self._lock:
            cur = await self._conn.execute(
                "SELECT min(next_attempt_at) FROM outbox WHERE sent_at IS NULL AND dead_at IS NULL")
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def mark_sent(self, row_id: str, now: float) -> None:
        await self._update("UPDATE outbox SET sent_at = ?, attempts = attempts + 1,"
                           " last_error = NULL WHERE id = ?", (now, row_id))

    async def mark_failed(self, row_id: str, error: str, next_at: float | None,
                          now: float) -> None:
        """Count a failed attempt; `next_at` None gives up (the row is dead)."""
        if next_at is None:
            await self._update("UPDATE outbox SET attempts = attempts + 1, last_error = ?,"
                               " dead_at = ? WHERE id = ?", (error[:500], now, row_id))
        else:
            await self._update("UPDATE outbox SET attempts = attempts + 1, last_error = ?,"
                               " next_attempt_at = ? WHERE id = ?", (error[:500], next_at, row_id))

    async def defer(self, row_id: str, next_at: float) -> None:
        """Postpone without spending an attempt (rate limit)."""
        await self._update("UPDATE outbox SET next_attempt_at = ? WHERE id = ?", (next_at, row_id))

    async def _update(self, sql: str, args: tuple[Any, ...]) -> None:
        async with self._lock:
            await self._conn.execute(sql, args)
            await self._conn.commit()

    async def status(self, now: float | None = None) -> OutboxStatus:
        now = time.time() if now is None else now
        async with self._lock:
            cur = await self._conn.execute(
                "SELECT sum(sent_at IS NULL AND dead_at IS NULL), sum(sent_at IS NOT NULL),"
                " sum(dead_at IS NOT NULL),"
                " min(CASE WHEN sent_at IS NULL AND dead_at IS NULL THEN created_at END)"
                " FROM outbox")
            row = await cur.fetchone()
            cur = await self._conn.execute(
                "SELECT last_error FROM outbox WHERE sent_at IS NULL AND last_error IS NOT NULL"
                " ORDER BY next_attempt_at DESC LIMIT 1")
            err = await cur.fetchone()
        assert row is not None
        oldest = None if row[3] is None else max(0.0, now - float(row[3]))
        return OutboxStatus(int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), oldest,
                            None if err is None else str(err[0]))


# --- delivery ------------------------------------------------------------------------------


class RateLimiter:
    """Token bucket: `per_min` sends a minute, bursts of `burst`."""

    def __init__(self, per_min: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate_s = per_min / 60.0
        self.burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._last = clock()

    def try_take(self) -> float:
        """0.0 if a token was taken, else seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_s)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_s


@dataclass
class DeliveryStats:
    """Counters for heartbeats and metrics, per sink."""

    sent: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # failed attempts
    dead: dict[str, int] = field(default_factory=dict)  # given up
    rate_limited: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def bump(d: dict[str, int], sink: str) -> None:
        d[sink] = d.get(sink, 0) + 1


def _retry_delay(policy: Backoff, attempts: int) -> float:
    """The delay after the `attempts`-th failed attempt, from the shared back-off bounds."""
    return next(itertools.islice(policy.delays(), attempts - 1, None))


class AlertWorker:
    """Daemon service delivering the outbox; never raises out of a delivery."""

    name = "alert-outbox"

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[Sink],
        *,
        retry: Backoff,
        rate_per_min: float = 30.0,
        burst: int = 10,
        poll_s: float = 1.0,
    ) -> None:
        self.outbox = outbox
        self.sinks = {s.name: s for s in sinks}
        self.retry = retry
        self.stats = DeliveryStats()
        self._limits = {s.name: RateLimiter(rate_per_min, burst) for s in sinks}
        self._poll_s = poll_s
        self._stop = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()
        self.outbox.wake.set()

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    await self.deliver_due()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("alert outbox: delivery pass failed; retrying")
                wait = self._poll_s
                nxt = await self._next_due()
                if nxt is not None:
                    wait = min(wait, max(0.0, nxt - time.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.outbox.wake.wait(), timeout=max(wait, 0.01))
                self.outbox.wake.clear()
        finally:
            await self.close_sinks()

    async def close_sinks(self) -> None:
        """Release the sinks' connections (run() does it on exit)."""
        for sink in self.sinks.values():
            with contextlib.suppress(Exception):
                await sink.close()

    async def _next_due(self) -> float | None:
        try:
            return await self.outbox.next_due_at()
        except Exception:
            log.exception("alert outbox: cannot read the next due time")
            return None

    async def deliver_due(self) -> int:
        """One pass: every due row, concurrently across sinks. Returns rows sent."""
        rows = await self.outbox.due(time.time())
        by_sink: dict[str, list[OutboxRow]] = {}
        for r in rows:
            by_sink.setdefault(r.sink, []).append(r)
        results = await asyncio.gather(*(self._deliver_sink(s, rs) for s, rs in by_sink.items()))
        return sum(results)

    async def _deliver_sink(self, sink_name: str, rows: list[OutboxRow]) -> int:
        sink = self.sinks.get(sink_name)
        sent = 0
        for row in rows:
            if self._stop.is_set():
                break
            now = time.time()
            if sink is None:
                # A sink removed from config: its rows can never go out; say so once each.
                log.error("alert outbox: sink %s is no longer configured; dropping alert %s",
                          sink_name, row.alert_id)
                await self.outbox.mark_failed(row.id, "sink no longer configured", None, now)
                DeliveryStats.bump(self.stats.dead, sink_name)
                continue
            wait = self._limits[sink_name].try_take()
            if wait > 0:
                DeliveryStats.bump(self.stats.rate_limited, sink_name)
                log.warning("alert outbox: %s rate-limited; alert %s waits %.1fs",
                            sink_name, row.alert_id, wait)
                await self.outbox.defer(row.id, now + wait)
                continue
            try:
                await sink.send(row.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(sink_name, row, exc)
                continue
            await self.outbox.mark_sent(row.id, time.time())
            DeliveryStats.bump(self.stats.sent, sink_name)
            sent += 1
            log.info("alert outbox: %s delivered alert %s", sink_name, row.alert_id)
        return sent

    async def _failed(self, sink_name: str, row: OutboxRow, exc: BaseException) -> None:
        now = time.time()
        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        attempts = row.attempts + 1
        delay = _retry_delay(self.retry, attempts)
        out_of_attempts = bool(self.retry.max_attempts) and attempts >= self.retry.max_attempts
        past_deadline = (self.retry.deadline_s is not None
                         and now + delay - row.created_at > self.retry.deadline_s)
        DeliveryStats.bump(self.stats.failed, sink_name)
        self.stats.last_error[sink_name] = error
        if out_of_attempts or past_deadline:
            DeliveryStats.bump(self.stats.dead, sink_name)
            log.error("alert outbox: %s failed alert %s %d time(s), giving up: %s",
                      sink_name, row.alert_id, attempts, error)
            await self.outbox.mark_failed(row.id, error, None, now)
        else:
            log.warning("alert outbox: %s failed alert %s (attempt %d): %s; retry in %.1fs",
                        sink_name, row.alert_id, attempts, error, delay)
            await self.outbox.mark_failed(row.id, error, now + delay, now)

    def counters(self) -> dict[str, int]:
        s = self.stats
        return {"alerts_sent": sum(s.sent.values()), "alerts_failed": sum(s.failed.values()),
                "alerts_dead": sum(s.dead.values())}


class DeadmanPinger:
    """GET `url` every `interval_s` while `healthy()`; silence tells the outside world."""

    name = "deadman-ping"

    def __init__(self, url: str, interval_s: float, healthy: Callable[[], bool],
                 timeout_s: float) -> None:
        self.url = url
        self.interval_s = interval_s
        self._healthy = healthy
        self._timeout_s = timeout_s
        self._stop = asyncio.Event()
        self.pings = 0
        self.failures = 0
        self.skipped = 0
        self.last_error: str | None = None

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        async with _client_session(self._timeout_s) as session:
            t0 = loop.time()
            k = 0
            while not self._stop.is_set():
                await self.ping_once(session)
                k = max(k + 1, int((loop.time() - t0) / self.interval_s) + 1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(t0 + k * self.interval_s):
                        await self._stop.wait()

    async def ping_once(self, session: aiohttp.ClientSession) -> bool:
        if not self._healthy():
            self.skipped += 1
            return False
        try:
            async with session.get(self.url) as resp:
                if resp.status // 100 != 2:
                    raise RuntimeError(f"HTTP {resp.status}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("dead-man ping to %s failed: %s", safe_url(self.url), self.last_error)
            return False
        self.pings += 1
        return True
