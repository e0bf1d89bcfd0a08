"""ops.notify.metrics: snapshots rendered for Prometheus and scraped over loopback HTTP."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.core.gaps import GapStatus
from ops.notify.metrics import (
    AccountMetrics,
    MetricsExporter,
    MetricsSnapshot,
    ProcessMetrics,
    serve,
)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def proc(name: str, gap: float, status: GapStatus = "ok") -> ProcessMetrics:
    return ProcessMetrics(
        name=name, account="large", role="dispatcher", state="RUNNING", status=status,
        heartbeat_age_s=0.5, last_run_age_s=gap, expected_interval_s=2.0,
        last_run_lateness_s=0.01, last_run_outcome="ok", runs={"ok": 7, "error": 1},
        progress={"stream.events": 12.0},
    )


def labels(name: str, **kw: str) -> tuple[tuple[str, str], ...]:
    base = {"process": name, "account": "large", "role": "dispatcher", **kw}
    return tuple(sorted(base.items()))


def test_snapshot_is_served_on_loopback_and_stale_processes_vanish() -> None:
    exporter = MetricsExporter()
    server = serve(exporter, "127.0.0.1", 0)
    try:
        assert scrape(server.port) == {}  # nothing published yet: no made-up zeros
        exporter.publish(MetricsSnapshot(
            as_of=1000.0, pass_duration_s=0.02,
            processes=[proc("large-dispatcher", 1.5), proc("gone", 3.0)],
            open_incidents={"hung": 1}, incidents_opened={"hung": 2},
            restarts={"large-dispatcher": 2}, database_reachable=False, reads_from="buffer",
            buffer_pending=42, buffer_oldest_age_s=12.5,
            accounts=[AccountMetrics("large", 3, 2), AccountMetrics("tiny", None, None)],
            alerts_sent={"webhook0:http://127.0.0.1:1": 4}, alerts_failed={"sns:x": 2},
            outbox_pending=1, deadman_pings=9,
        ))
        m = scrape(server.port)
        lab = labels("large-dispatcher")
        assert m[("ops_last_run_age_seconds", lab)] == 1.5
        assert m[("ops_heartbeat_age_seconds", lab)] == 0.5
        assert m[("ops_expected_interval_seconds", lab)] == 2.0
        assert m[("ops_process_status", labels("large-dispatcher", status="ok"))] == 1.0
        assert m[("ops_process_status", labels("large-dispatcher", status="stalled"))] == 0.0
        assert m[("ops_runs_total", labels("large-dispatcher", outcome="error"))] == 1.0
        assert m[("ops_progress", labels("large-dispatcher", counter="stream.events"))] == 12.0
        assert m[("ops_open_incidents", (("kind", "hung"),))] == 1.0
        assert m[("ops_watchdog_restarts_total", (("process", "large-dispatcher"),))] == 2.0
        assert m[("ops_database_reachable", ())] == 0.0
        assert m[("ops_buffer_pending_rows", ())] == 42.0
        assert m[("ops_buffer_oldest_age_seconds", ())] == 12.5
        assert m[("ops_orders_today", (("account", "large"),))] == 3.0
        assert ("ops_orders_today", (("account", "tiny"),)) not in m  # unknown, not zero
        assert m[("ops_alert_failures_total", (("sink", "sns:x"),))] == 2.0
        exporter.publish(MetricsSnapshot(as_of=1001.0, pass_duration_s=0.01,
                                         processes=[proc("large-dispatcher", 2.5)]))
        m = scrape(server.port)
        assert m[("ops_last_run_age_seconds", lab)] == 2.5
        assert not any(dict(k[1]).get("process") == "gone" for k in m)
    finally:
        server.close()


def test_refuses_a_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="not a loopback"):
        serve(MetricsExporter(), "0.0.0.0", 0)
