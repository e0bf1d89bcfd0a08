"""`ops status` and acknowledged incidents: an acknowledged incident stays listed (marked,
with who) but no longer makes the report degraded; an unacknowledged one still does.

collect_status with a Store on the per-test Postgres and a stand-in supervisord that runs
one process without heartbeats ("sim"), so nothing but the incidents decides the verdict.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ops.commands.status import collect_status, render_text
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.incidents import ack_incident
from ops.supervise.supervisor import ProcessInfo, SupervisorClient

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "conf" / "ops.toml"


class OneProcessSupervisor(SupervisorClient):
    """What collect_status asks supervisord: its pid and its processes (one, RUNNING)."""

    def __init__(self, home: Path) -> None:
        super().__init__(home / "no-such.sock")  # never called: both reads are answered here

    def pid(self) -> int:
        return 4242

    def processes(self) -> list[ProcessInfo]:
        now = int(time.time())
        return [ProcessInfo(group="sim", name="sim", state="RUNNING", pid=4343,
                            start=now - 600, now=now, exitstatus=0, spawnerr="",
                            description="")]


async def test_an_acknowledged_incident_keeps_status_healthy(pg_url: str,
                                                             tmp_path: Path) -> None:
    home = tmp_path / "home"
    # What `ops up` would have rendered: only sim, so every expected process runs.
    (home / "supervisor").mkdir(parents=True)
    (home / "supervisor" / "stack.conf").write_text("[program:sim]\ncommand=true\n")
    env = RuntimeEnv(config_path=CONFIG, home=home, database_url=pg_url)
    config = load_config(CONFIG)
    sup = OneProcessSupervisor(home)
    now = datetime.now(UTC)
    async with await Store.open(env, process="test") as store:
        healthy = await collect_status(env, config, store=store, supervisor=sup)
        assert (healthy.status, healthy.reasons, healthy.incidents) == ("healthy", [], [])

        drift = await store.open_incident("position-drift", detail="MSFT broker 5 vs db 4",
                                          account="large", dedupe_key="drift:large",
                                          at=now - timedelta(minutes=3))
        stalled = await store.open_incident("stalled", detail="no heartbeat for 12s",
                                            process="tiny-stream",
                                            dedupe_key="stalled:tiny-stream",
                                            at=now - timedelta(minutes=1))
        report = await collect_status(env, config, store=store, supervisor=sup)
        assert report.status == "degraded" and report.exit_code == 1
        assert report.reasons == ["open incident position-drift: MSFT broker 5 vs db 4",
                                  "open incident stalled: no heartbeat for 12s"]

        # One acknowledged: still listed, marked with who; only the other degrades.
        assert await ack_incident(store.pool, drift, "cli:alice", now)
        report = await collect_status(env, config, store=store, supervisor=sup)
        assert report.status == "degraded"
        assert report.reasons == ["open incident stalled: no heartbeat for 12s"]
        by_kind = {i.kind: i for i in report.incidents}
        assert (by_kind["position-drift"].acked_by, by_kind["stalled"].acked_by) == (
            "cli:alice", None)

        # Both acknowledged: healthy, both still listed.
        assert await ack_incident(store.pool, stalled, "dash:bob", now)
        report = await collect_status(env, config, store=store, supervisor=sup)
        assert (report.status, report.exit_code, report.reasons) == ("healthy", 0, [])
        assert [i.kind for i in report.incidents] == ["position-drift", "stalled"]
        js = report.to_json()
        assert [(i["kind"], i["acked_by"]) for i in js["incidents"]] == [
            ("position-drift", "cli:alice"), ("stalled", "dash:bob")]
        text = render_text(report)
        assert "open incidents (2, 2 acked):" in text
        assert "ACKED by cli:alice: MSFT broker 5 vs db 4" in text
        assert "ACKED by dash:bob: no heartbeat for 12s" in text

        # Closed: gone from the report.
        await store.close_incident(incident_id=drift, reason="fixed", by="cli:alice")
        report = await collect_status(env, config, store=store, supervisor=sup)
        assert [i.kind for i in report.incidents] == ["stalled"]
