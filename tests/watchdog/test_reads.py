"""The watchdog's own read of the last completed runs (index probes, not a ledger scan)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops.core.models import RunRecord
from ops.notify.alerts import Outbox
from ops.roles.watchdog import Watchdog
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.supervise.supervisor import SupervisorClient

ROOT = Path(__file__).resolve().parents[2]


def rec(process: str, finished: datetime | None, outcome: str = "ok") -> RunRecord:
    slot = finished or datetime.now(UTC)
    return RunRecord(RunRecord.make_slot_id("large", process, slot), process, "large",
                     "dispatcher", slot, slot, slot, finished, outcome, 0.25)


async def test_latest_runs_agrees_with_the_store(ops_env: RuntimeEnv, ops_store: Store,
                                                 tmp_path: Path) -> None:
    ops_env.config_path.write_text((ROOT / "conf" / "ops.toml").read_text())
    t0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    for i in range(5):
        await ops_store.record_run(rec("a", t0 + timedelta(seconds=i)))
        await ops_store.record_run(rec("b", t0 + timedelta(seconds=2 * i), "idle-market-closed"))
    await ops_store.record_run(rec("a", None, "running"))  # in flight: not completed
    outbox = await Outbox.open(tmp_path / "alerts.sqlite3")
    try:
        wd = Watchdog(ops_env, load_config(ops_env.config_path), ops_store,
                      SupervisorClient(tmp_path / "none.sock"), outbox, sinks=[])
        mine, source = await wd.latest_runs(["a", "b", "never-ran"])
        assert source == "postgres"
        theirs = {r.process: r for r in (await ops_store.latest_runs()).rows}
        assert mine == theirs
        assert mine["a"].finished_at == t0 + timedelta(seconds=4)
        assert mine["b"].outcome == "idle-market-closed" and mine["b"].lateness_s == 0.25
    finally:
        await outbox.close()


@pytest.mark.integration
def test_signal_stopped_reads_the_process_state() -> None:
    """A real child: running, then SIGSTOPped (state T), then gone."""
    import signal
    import subprocess
    import sys

    from ops.roles.watchdog import signal_stopped
    from tests.support import eventually_sync

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not signal_stopped(child.pid)
        child.send_signal(signal.SIGSTOP)
        eventually_sync(lambda: signal_stopped(child.pid), "the child seen stopped", 10, 0.01)
    finally:
        child.kill()
        child.wait()
    assert not signal_stopped(child.pid) and not signal_stopped(0)
