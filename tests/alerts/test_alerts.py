"""ops.notify.alerts: outbox delivery to a real local HTTP receiver, retries, dedupe, rate limit,
dead-man ping, and SNS through boto3 against moto."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import web
from moto import mock_aws

from ops.core.backoff import Backoff
from ops.notify.alerts import (
    Alert,
    AlertWorker,
    DeadmanPinger,
    Outbox,
    RateLimiter,
    SnsSink,
    WebhookSink,
    safe_url,
)
from tests.support import eventually, free_port

FAST = Backoff(initial_s=0.05, max_s=0.2, max_attempts=0, deadline_s=30.0, jitter=False)


class Receiver:
    """A real HTTP server on loopback collecting POSTed JSON bodies and GETs."""

    def __init__(self, port: int, *, status: int = 200, hang: bool = False) -> None:
        self.port = port
        self.status = status
        self.hang = hang
        self.page: str | None = None  # an HTML body to answer with
        self.bodies: list[dict[str, Any]] = []
        self.gets = 0
        self.got = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/T000/SECRET-TOKEN"

    async def _post(self, request: web.Request) -> web.Response:
        if self.hang:
            await asyncio.sleep(3600)
        self.bodies.append(await request.json())
        self.got.set()
        if self.page is not None:
            return web.Response(status=self.status, text=self.page, content_type="text/html")
        return web.Response(status=self.status, text="ok")

    async def _get(self, request: web.Request) -> web.Response:
        self.gets += 1
        self.got.set()
        return web.Response(text="OK")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/{a}/{b}", self._post)
        app.router.add_get("/ping/{x}", self._get)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    box = await Outbox.open(tmp_path / "alerts.sqlite3")
    yield box
    await box.close()


def alert(event: str = "opened", key: str = "watchdog:large-dispatcher", **kw: Any) -> Alert:
    fields: dict[str, Any] = dict(
        event=event, key=key, kind="hung", process="large-dispatcher", account="large",
        detail="RUNNING but heartbeat 6.0s old", opened_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
    )
    fields.update(kw)
    return Alert(**fields)


async def running(worker: AlertWorker) -> asyncio.Task[None]:
    return asyncio.create_task(worker.run())


async def stop(worker: AlertWorker, task: asyncio.Task[None]) -> None:
    worker.request_stop()
    await asyncio.wait_for(task, 5)


async def test_delivers_slack_compatible_json_to_a_real_receiver(
    outbox: Outbox, receiver: Receiver,
) -> None:
    sink = WebhookSink(receiver.url, timeout_s=2)
    worker = AlertWorker(outbox, [sink], retry=FAST)
    task = await running(worker)
    try:
        assert await outbox.enqueue(alert(), [sink.name]) == 1
        await eventually(lambda: receiver.bodies, "delivery", timeout_s=10)
    finally:
        await stop(worker, task)
    body = receiver.bodies[0]
    assert body["text"].startswith("[ops-pipeline] INCIDENT OPEN hung on large-dispatcher")
    assert body["alert"]["process"] == "large-dispatcher" and body["alert"]["event"] == "opened"
    rows = await outbox.rows()
    assert rows[0].sent_at is not None and rows[0].attempts == 1
    # The token in the URL path never reaches the sink's (logged) name.
    assert "SECRET" not in sink.name and safe_url(receiver.url) in sink.name


async def test_receiver_down_is_retried_then_delivered_and_failures_are_visible(
    outbox: Outbox, caplog: pytest.LogCaptureFixture,
) -> None:
    down = Receiver(free_port())  # nothing listens on this port yet
    sink = WebhookSink(down.url, timeout_s=1)
    worker = AlertWorker(outbox, [sink], retry=FAST)
    task = await running(worker)
    try:
        t0 = time.monotonic()
        await outbox.enqueue(alert(), [sink.name])
        # enqueue is a local write: it returns at once whatever the sink does.
        assert time.monotonic() - t0 < 1.0
        await eventually(lambda: worker.stats.failed.get(sink.name, 0) >= 3,
                         "three failed attempts", timeout_s=10)
        status = await outbox.status()
        assert status.pending == 1 and status.last_error is not None
        assert "ClientConnectorError" in status.last_error or "Connect" in status.last_error
        await down.start()
        try:
            await eventually(lambda: down.bodies, "delivery after the receiver came back",
                             timeout_s=10)
        finally:
            await down.stop()
    finally:
        await stop(worker, task)
    assert (await outbox.status()).pending == 0
    assert any("failed alert" in r.getMessage() for r in caplog.records)
    assert not any("SECRET-TOKEN" in r.getMessage() for r in caplog.records)


async def test_a_hanging_sink_never_blocks_another_sink(
    outbox: Outbox, receiver: Receiver,
) -> None:
    stuck = Receiver(free_port(), hang=True)
    await stuck.start()
    try:
        slow = WebhookSink(stuck.url, timeout_s=0.5, index=1)
        good = WebhookSink(receiver.url, timeout_s=2)
        worker = AlertWorker(outbox, [slow, good], retry=FAST)
        task = await running(worker)
        try:
            await outbox.enqueue(alert(), [slow.name, good.name])
            await eventually(lambda: receiver.bodies, "the good sink got it", timeout_s=5)
            await eventually(lambda: worker.stats.failed.get(slow.name, 0) >= 1,
                             "the hanging sink timed out", timeout_s=5)
            assert "TimeoutError" in worker.stats.last_error[slow.name]
        finally:
            await stop(worker, task)
    finally:
        await stuck.stop()


async def test_duplicates_are_sent_once_and_http_errors_are_failures(
    outbox: Outbox, receiver: Receiver,
) -> None:
    sink = WebhookSink(receiver.url, timeout_s=2)
    assert await outbox.enqueue(alert(), [sink.name]) == 1
    assert await outbox.enqueue(alert(), [sink.name]) == 0  # same incident event: deduped
    assert await outbox.enqueue(alert("closed", duration_s=12.0, restarts=1), [sink.name]) == 1
    worker = AlertWorker(outbox, [sink], retry=FAST)
    try:
        assert await worker.deliver_due() == 2
        assert [b["alert"]["event"] for b in receiver.bodies] == ["opened", "closed"]
        assert "lasted 12s, 1 restart(s)" in receiver.bodies[1]["text"]
        receiver.status = 500
        await outbox.enqueue(alert(key="watchdog:other"), [sink.name])
        assert await worker.deliver_due() == 0
    finally:
        await worker.close_sinks()
    assert worker.stats.last_error[sink.name].startswith("RuntimeError: HTTP 500")


async def test_an_html_error_page_is_reported_by_its_title(
    outbox: Outbox, receiver: Receiver,
) -> None:
    sink = WebhookSink(receiver.url, timeout_s=2)
    receiver.status = 502
    receiver.page = ("<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway"
                     "</h1><script>track()</script>" + "x" * 5000 + "</body></html>")
    await outbox.enqueue(alert(), [sink.name])
    worker = AlertWorker(outbox, [sink], retry=FAST)
    try:
        assert await worker.deliver_due() == 0
    finally:
        await worker.close_sinks()
    assert worker.stats.last_error[sink.name] == (
        "RuntimeError: HTTP 502: HTML error page: 502 Bad Gateway")


async def test_rate_limit_defers_without_spending_attempts(
    outbox: Outbox, receiver: Receiver,
) -> None:
    sink = WebhookSink(receiver.url, timeout_s=2)
    worker = AlertWorker(outbox, [sink], retry=FAST, rate_per_min=60, burst=2)
    for i in range(5):
        await outbox.enqueue(alert(key=f"watchdog:p{i}"), [sink.name])
    try:
        assert await worker.deliver_due() == 2
    finally:
        await worker.close_sinks()
    assert worker.stats.rate_limited[sink.name] == 3
    pending = [r for r in await outbox.rows() if r.sent_at is None]
    assert len(pending) == 3 and all(r.attempts == 0 for r in pending)
    assert all(r.next_attempt_at > time.time() for r in pending)


async def test_gives_up_after_the_retry_deadline_and_keeps_the_row(
    outbox: Outbox,
) -> None:
    sink = WebhookSink(Receiver(free_port()).url, timeout_s=1)
    policy = Backoff(initial_s=0.05, max_s=0.05, max_attempts=3, deadline_s=None, jitter=False)
    worker = AlertWorker(outbox, [sink], retry=policy)
    task = await running(worker)
    try:
        await outbox.enqueue(alert(), [sink.name])
        await eventually(lambda: worker.stats.dead.get(sink.name), "given up", timeout_s=10)
    finally:
        await stop(worker, task)
    status = await outbox.status()
    assert status.dead == 1 and status.pending == 0
    assert (await outbox.rows())[0].attempts == 3


async def test_outbox_survives_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "alerts.sqlite3"
    box = await Outbox.open(path)
    sink = WebhookSink(receiver.url, timeout_s=2)
    await box.enqueue(alert(), [sink.name])
    await box.close()  # the watchdog died before delivering
    box = await Outbox.open(path)
    try:
        worker = AlertWorker(box, [sink], retry=FAST)
        assert await worker.deliver_due() == 1
        await worker.close_sinks()
        assert len(receiver.bodies) == 1
        assert oct(path.stat().st_mode & 0o777) == "0o600"
    finally:
        await box.close()


def test_rate_limiter_refills() -> None:
    t = [0.0]
    rl = RateLimiter(per_min=60, burst=1, clock=lambda: t[0])
    assert rl.try_take() == 0.0
    assert rl.try_take() == pytest.approx(1.0)
    t[0] = 1.0
    assert rl.try_take() == 0.0


async def test_deadman_pings_only_while_healthy(receiver: Receiver) -> None:
    healthy = [True]
    url = f"http://127.0.0.1:{receiver.port}/ping/abc"
    pinger = DeadmanPinger(url, interval_s=0.1, healthy=lambda: healthy[0], timeout_s=1)
    task = asyncio.create_task(pinger.run())
    try:
        await eventually(lambda: receiver.gets >= 2, "pings", timeout_s=10)
        healthy[0] = False
        await eventually(lambda: pinger.skipped >= 2, "a skipped ping", timeout_s=10)
        before = receiver.gets
        await eventually(lambda: pinger.skipped >= 4, "more skipped pings", timeout_s=10)
        assert receiver.gets == before
    finally:
        pinger.request_stop()
        await asyncio.wait_for(task, 5)


async def test_deadman_failures_are_counted() -> None:
    url = f"http://127.0.0.1:{free_port()}/ping/abc"
    pinger = DeadmanPinger(url, interval_s=0.05, healthy=lambda: True, timeout_s=1)
    task = asyncio.create_task(pinger.run())
    try:
        await eventually(lambda: pinger.failures >= 2, "failures", timeout_s=10)
    finally:
        pinger.request_stop()
        await asyncio.wait_for(task, 5)
    assert pinger.pings == 0 and pinger.last_error


async def test_sns_sink_publishes_through_boto3(outbox: Outbox) -> None:
    with mock_aws():
        sns = boto3.client("sns", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        arn = sns.create_topic(Name="ops-alerts")["TopicArn"]
        queue_url = sqs.create_queue(QueueName="alerts")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
        sink = SnsSink(arn, timeout_s=2)
        worker = AlertWorker(outbox, [sink], retry=FAST)
        await outbox.enqueue(alert(), [sink.name])
        assert await worker.deliver_due() == 1
        msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10)["Messages"]
        envelope = json.loads(msgs[0]["Body"])
        body = json.loads(envelope["Message"])
        assert body["alert"]["kind"] == "hung"
        assert envelope["Subject"].startswith("[ops-pipeline] INCIDENT OPEN")
        # A topic that does not exist is a failed, retried attempt, not an exception.
        bad = SnsSink(arn.replace("ops-alerts", "missing"), timeout_s=2)
        worker2 = AlertWorker(outbox, [bad], retry=FAST)
        await outbox.enqueue(alert(), [bad.name])
        assert await worker2.deliver_due() == 0
        assert worker2.stats.failed[bad.name] == 1
