"""Prometheus metrics: the watchdog's figures, exported over HTTP on a loopback port.

The watchdog (without supervisord: the monitor role) builds one `MetricsSnapshot` per
pass (the same figures it judged: heartbeat ages, last-run gaps against the expected
interval, run outcomes and lateness, open incidents, restarts, buffer depth and age,
orders/fills per account, alert delivery) and hands it to `MetricsExporter.publish`. A
custom collector renders the latest snapshot at scrape time, so a process that
disappears also disappears from the metrics (no stale label sets), and a scrape never
waits on Postgres or supervisord.

`serve(exporter, host, port)` starts prometheus-client's HTTP server in a thread; the host
must be a loopback address (config validates it, `serve` checks again).
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ops.core.gaps import SEVERITY, GapStatus


@dataclass(frozen=True, slots=True)
class ProcessMetrics:
    name: str
    account: str | None
    role: str
    state: str  # supervisord state
    status: GapStatus
    heartbeat_age_s: float | None
    last_run_age_s: float | None  # the gap
    expected_interval_s: float | None
    last_run_lateness_s: float | None
    last_run_outcome: str | None
    runs: Mapping[str, int] = field(default_factory=dict)  # outcome -> count (this incarnation)
    progress: Mapping[str, float] = field(default_factory=dict)  # numeric heartbeat counters


@dataclass(frozen=True, slots=True)
class AccountMetrics:
    name: str
    orders_today: int | None
    fills_today: int | None


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    as_of: float  # epoch seconds of the pass
    pass_duration_s: float
    processes: list[ProcessMetrics] = field(default_factory=list)
    open_incidents: Mapping[str, int] = field(default_factory=dict)  # kind -> open count
    incidents_opened: Mapping[str, int] = field(default_factory=dict)  # kind -> total (this run)
    restarts: Mapping[str, int] = field(default_factory=dict)  # process -> restarts made/seen
    database_reachable: bool = True
    reads_from: str = "postgres"
    buffer_pending: int = 0
    buffer_oldest_age_s: float | None = None
    buffer_dead: int = 0
    accounts: list[AccountMetrics] = field(default_factory=list)
    alerts_sent: Mapping[str, int] = field(default_factory=dict)  # sink -> count
    alerts_failed: Mapping[str, int] = field(default_factory=dict)
    alerts_dead: Mapping[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    deadman_pings: int = 0
    deadman_failures: int = 0


_STATUSES: tuple[GapStatus, ...] = tuple(SEVERITY)


class MetricsExporter(Collector):
    """Holds the latest snapshot; registered in its own registry (no process defaults)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._lock = threading.Lock()
        self._snap: MetricsSnapshot | None = None
        self.registry.register(self)

    def publish(self, snap: MetricsSnapshot) -> None:
        with self._lock:
            self._snap = snap

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snap
        if snap is None:
            return
        yield from _process_metrics(snap)
        yield from _system_metrics(snap)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _process_metrics(snap: MetricsSnapshot) -> Iterator[Metric]:
    pl = ["process", "account", "role"]
    hb = _gauge("ops_heartbeat_age_seconds", "Age of the process's latest heartbeat.", pl)
    gap = _gauge("ops_last_run_age_seconds",
                 "Time since the process's last completed run (its gap).", pl)
    interval = _gauge("ops_expected_interval_seconds", "The process's schedule interval.", pl)
    late = _gauge("ops_last_run_lateness_seconds", "Lateness of the last completed run.", pl)
    up = _gauge("ops_process_running", "1 when the process is RUNNING (supervisord's state; "
                "without supervisord: its heartbeat is fresh).", pl)
    status = _gauge("ops_process_status",
                    "1 for the process's current status (ok/late/stalled/...).", [*pl, "status"])
    outcome = _gauge("ops_last_run_outcome", "1 for the outcome of the last completed run.",
                     [*pl, "outcome"])
    runs = CounterMetricFamily("ops_runs", "Runs by outcome since the process started.",
                               labels=[*pl, "outcome"])
    progress = _gauge("ops_progress", "Numeric progress counters from the heartbeat.",
                      [*pl, "counter"])
    for p in snap.processes:
        lv = [p.name, p.account or "", p.role]
        for fam, value in ((hb, p.heartbeat_age_s), (gap, p.last_run_age_s),
                           (interval, p.expected_interval_s), (late, p.last_run_lateness_s)):
            if value is not None:
                fam.add_metric(lv, value)
        up.add_metric(lv, 1.0 if p.state == "RUNNING" else 0.0)
        for s in _STATUSES:
            status.add_metric([*lv, s], 1.0 if p.status == s else 0.0)
        if p.last_run_outcome:
            outcome.add_metric([*lv, p.last_run_outcome], 1.0)
        for o, n in sorted(p.runs.items()):
            runs.add_metric([*lv, o], float(n))
        for c, v in sorted(p.progress.items()):
            progress.add_metric([*lv, c], v)
    yield from (hb, gap, interval, late, up, status, outcome, runs, progress)


def _system_metrics(snap: MetricsSnapshot) -> Iterator[Metric]:
    inc = _gauge("ops_open_incidents", "Open incidents by kind.", ["kind"])
    for kind, n in sorted(snap.open_incidents.items()):
        inc.add_metric([kind], float(n))
    yield inc
    opened = CounterMetricFamily("ops_incidents_opened", "Incidents the watchdog opened.",
                                 labels=["kind"])
    for kind, n in sorted(snap.incidents_opened.items()):
        opened.add_metric([kind], float(n))
    yield opened
    restarts = CounterMetricFamily("ops_watchdog_restarts",
                                   "Kills and starts the watchdog made (without "
                                   "supervisord: restarts the monitor saw), by process.",
                                   labels=["process"])
    for proc, n in sorted(snap.restarts.items()):
        restarts.add_metric([proc], float(n))
    yield restarts
    yield GaugeMetricFamily("ops_database_reachable", "1 when Postgres answers.",
                            value=1.0 if snap.database_reachable else 0.0)
    src = _gauge("ops_reads_from", "1 for where the watchdog's reads came from.", ["source"])
    src.add_metric([snap.reads_from], 1.0)
    yield src
    yield GaugeMetricFamily("ops_buffer_pending_rows", "Writes waiting in the SQLite buffer.",
                            value=float(snap.buffer_pending))
    yield GaugeMetricFamily("ops_buffer_dead_rows", "Buffered rows quarantined by replay.",
                            value=float(snap.buffer_dead))
    if snap.buffer_oldest_age_s is not None:
        yield GaugeMetricFamily("ops_buffer_oldest_age_seconds",
                                "Age of the oldest pending buffered write.",
                                value=snap.buffer_oldest_age_s)
    orders = _gauge("ops_orders_today", "Orders created today (New York day).", ["account"])
    fills = _gauge("ops_fills_today", "Fills received today (New York day).", ["account"])
    for a in snap.accounts:
        if a.orders_today is not None:
            orders.add_metric([a.name], float(a.orders_today))
        if a.fills_today is not None:
            fills.add_metric([a.name], float(a.fills_today))
    yield orders
    yield fills
    for name, doc, values in (
        ("ops_alerts_sent", "Alerts delivered, by sink.", snap.alerts_sent),
        ("ops_alert_failures", "Failed alert delivery attempts, by sink.", snap.alerts_failed),
        ("ops_alerts_dead", "Alerts given up after the retry deadline, by sink.",
         snap.alerts_dead),
    ):
        fam = CounterMetricFamily(name, doc, labels=["sink"])
        for sink, n in sorted(values.items()):
            fam.add_metric([sink], float(n))
        yield fam
    yield GaugeMetricFamily("ops_alert_outbox_pending", "Alerts waiting for delivery.",
                            value=float(snap.outbox_pending))
    yield CounterMetricFamily("ops_deadman_pings", "Successful dead-man pings.",
                              value=float(snap.deadman_pings))
    yield CounterMetricFamily("ops_deadman_ping_failures", "Failed dead-man pings.",
                              value=float(snap.deadman_failures))
    yield GaugeMetricFamily("ops_watchdog_last_pass_timestamp_seconds",
                            "When the watchdog last evaluated everything.", value=snap.as_of)
    yield GaugeMetricFamily("ops_watchdog_pass_seconds", "How long the last pass took.",
                            value=snap.pass_duration_s)


class MetricsServer:
    """The running HTTP server; `close()` stops it."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve(exporter: MetricsExporter, host: str, port: int) -> MetricsServer:
    """Serve /metrics on host:port (port 0: any free one). Loopback only."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"metrics host {host!r} is not a loopback address")
    server, thread = start_http_server(port, addr=host, registry=exporter.registry)
    return MetricsServer(server, thread)
