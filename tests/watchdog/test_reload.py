"""The watchdog follows config edits (roles hot-reload their intervals; gaps must agree)."""

from __future__ import annotations

from pathlib import Path

from ops.notify.alerts import Outbox
from ops.roles.watchdog import Watchdog
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.supervise.supervisor import SupervisorClient

ROOT = Path(__file__).resolve().parents[2]


async def test_valid_edits_apply_and_bad_edits_keep_the_last_good_config(tmp_path: Path) -> None:
    path = tmp_path / "ops.toml"
    text = (ROOT / "conf" / "ops.toml").read_text()
    path.write_text(text)
    env = RuntimeEnv(config_path=path, home=tmp_path, database_url=None)
    outbox = await Outbox.open(tmp_path / "alerts.sqlite3")
    try:
        wd = Watchdog(env, load_config(path), None, SupervisorClient(tmp_path / "none.sock"),
                      outbox, sinks=[])
        assert wd.policy.heartbeat_stale_s == 5 and wd.policy.gap_bounds_s["dispatcher"] == 20
        assert not await wd.maybe_reload(force=True)  # unchanged
        path.write_text(text.replace("heartbeat_stale_s = 5", "heartbeat_stale_s = 7")
                            .replace("dispatcher = 20", "dispatcher = 25"))
        assert await wd.maybe_reload(force=True)
        assert wd.policy.heartbeat_stale_s == 7 and wd.policy.gap_bounds_s["dispatcher"] == 25
        assert wd.policy.settle_s == 15 + 7
        path.write_text(text.replace("heartbeat_stale_s = 5", "heartbeat_stale_s = -1"))
        assert not await wd.maybe_reload(force=True)
        assert wd.policy.heartbeat_stale_s == 7  # the last good config stays in force
    finally:
        await outbox.close()
