"""`ops incidents` (list, show, ack, close) through real processes against a real Postgres,
with the demo config conf/ops.toml: what each prints, what it records, its exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ops.runtime.env import EXIT_CONFIG, RuntimeEnv
from ops.store import Store
from ops.store.postgres import connect

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "conf" / "ops.toml"
CONFIG_DETAIL = ("config file /etc/ops/ops.toml is invalid: watchdog.heartbeat_stale_s: "
                 "must be > 0\nline 2 of the detail: the processes keep their last good config")


@pytest.fixture
def environ(pg_url: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env.update(OPS_CONFIG=str(CONFIG), OPS_HOME=str(tmp_path / "home"),
               OPS_DATABASE_URL=pg_url, PYTHONPATH=str(REPO))
    return env


def ops(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], env=environ, cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def query(url: str, sql: str, *args: Any) -> list[Any]:
    async def run() -> list[Any]:
        conn = await connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def seed(pg_url: str, tmp_path: Path) -> dict[str, str]:
    """Three incidents, as the roles would raise them: a config-invalid reported by three
    processes (two-line detail), an open position-drift, a stalled closed an hour ago.
    Returns kind -> id."""
    env = RuntimeEnv(config_path=CONFIG, home=tmp_path / "seed", database_url=pg_url)
    now = datetime.now(UTC)

    async def write() -> dict[str, str]:
        ids: dict[str, str] = {}
        async with await Store.open(env, process="seed") as store:
            for i, proc in enumerate(("large-dispatcher", "large-stream", "tiny-stream")):
                ids["config-invalid"] = await store.open_incident(
                    "config-invalid", detail=CONFIG_DETAIL, process=proc,
                    dedupe_key="config-invalid:/etc/ops/ops.toml",
                    at=now - timedelta(minutes=12) + timedelta(seconds=i))
            ids["position-drift"] = await store.open_incident(
                "position-drift", detail="MSFT broker 5 vs db 4", account="large",
                dedupe_key="drift:large", at=now - timedelta(minutes=3))
            ids["stalled"] = await store.open_incident(
                "stalled", detail="no heartbeat for 12s", process="tiny-stream",
                dedupe_key="stalled:tiny-stream", at=now - timedelta(hours=2))
            await store.close_incident(dedupe_key="stalled:tiny-stream",
                                       at=now - timedelta(hours=1),
                                       reason="heartbeats again for 30s", by="watchdog")
        return ids

    return asyncio.run(write())


def test_list_show_ack_close(environ: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    ids = seed(pg_url, tmp_path)
    cfg, drift, stalled = ids["config-invalid"], ids["position-drift"], ids["stalled"]

    out = ops(environ, "incidents")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "2 open incidents"
    assert lines[1].split() == ["ID", "STATE", "KIND", "WHERE", "AGE", "DETAIL"]
    # Oldest-opened last (newest first); short ids; the first line of the detail only.
    assert lines[2].split()[:5] == [drift[:8], "OPEN", "position-drift", "large", "3m"]
    assert lines[2].endswith("MSFT broker 5 vs db 4")
    assert lines[3].split()[:5] == [cfg[:8], "OPEN", "config-invalid", "large-dispatcher",
                                    "12m"]
    assert lines[3].endswith("must be > 0")
    assert lines[4].strip() == ("seen by 3: large-dispatcher, large-stream, tiny-stream")
    assert "line 2 of the detail" not in out.stdout and stalled[:8] not in out.stdout
    assert ops(environ, "incidents", "list").stdout == out.stdout

    # Closed ones too, with --since (and --all).
    since = ops(environ, "incidents", "list", "--since", "24h")
    assert since.returncode == 0, since.stderr
    assert since.stdout.splitlines()[0] == "2 open incidents, 1 closed"
    closed = next(line for line in since.stdout.splitlines() if line.startswith(stalled[:8]))
    assert "closed 60m ago" in closed and "stalled" in closed
    assert stalled[:8] not in ops(environ, "incidents", "--since", "30m").stdout
    assert stalled[:8] in ops(environ, "incidents", "--all").stdout

    # show: every field, the full detail, how it (has not yet) ended.
    show = ops(environ, "incidents", "show", cfg[:8])
    assert show.returncode == 0, show.stderr
    text = show.stdout
    for expected in (f"id:           {cfg}", "kind:         config-invalid",
                     "state:        OPEN\n", "process:      large-dispatcher",
                     "account:      -", "seen by:      large-dispatcher, large-stream, "
                     "tiny-stream", "dedupe key:   config-invalid:/etc/ops/ops.toml",
                     "acknowledged: no", "ended:        still open (for 12m)",
                     "not supervised (hand-run)", "\ndetail:\n  config file /etc/ops/ops.toml is "
                     "invalid", "\n  line 2 of the detail: the processes keep"):
        assert expected in text, (expected, text)

    # ack: recorded as cli:<user>; listed as ACKED; a second ack changes nothing.
    ack = ops(environ, "incidents", "ack", cfg[:8])
    assert ack.returncode == 0, ack.stderr
    assert ack.stdout.startswith(f"incident {cfg[:8]} (config-invalid, large-dispatcher) "
                                 "acknowledged by cli:")
    [row] = query(pg_url, "SELECT acked_by, acked_at, closed_at FROM incidents WHERE id = $1",
                  cfg)
    assert row["acked_by"].startswith("cli:") and row["acked_at"] is not None
    assert row["closed_at"] is None
    listed = ops(environ, "incidents").stdout
    assert listed.splitlines()[0] == "2 open incidents (1 acknowledged)"
    assert f"ACKED by {row['acked_by']}" in listed
    again = ops(environ, "incidents", "ack", cfg)
    assert again.returncode == 0 and "already acknowledged by cli:" in again.stdout
    assert f"acknowledged: by {row['acked_by']} at" in ops(environ, "incidents", "show",
                                                           cfg[:8]).stdout

    # close: the reason and who are recorded; a second close and an ack of a closed one
    # say when and why it closed, exit 1.
    close = ops(environ, "incidents", "close", drift[:8], "--reason", "fixed by hand")
    assert close.returncode == 0, close.stderr
    assert close.stdout.startswith(f"incident {drift[:8]} (position-drift, large) closed "
                                   "by cli:")
    assert close.stdout.rstrip().endswith(": fixed by hand")
    [row] = query(pg_url, "SELECT closed_at, closed_by, close_reason FROM incidents"
                  " WHERE id = $1", drift)
    assert row["closed_at"] is not None and row["closed_by"].startswith("cli:")
    assert row["close_reason"] == "fixed by hand"
    twice = ops(environ, "incidents", "close", drift[:8], "--reason", "again")
    assert twice.returncode == 1
    assert "is already closed" in twice.stderr and ": fixed by hand" in twice.stderr
    assert query(pg_url, "SELECT close_reason FROM incidents WHERE id = $1",
                 drift)[0]["close_reason"] == "fixed by hand"
    late_ack = ops(environ, "incidents", "ack", stalled[:8])
    assert late_ack.returncode == 1
    assert "is already closed" in late_ack.stderr and "by watchdog: heartbeats again for 30s" \
        in late_ack.stderr and "nothing to acknowledge" in late_ack.stderr
    ended = ops(environ, "incidents", "show", drift[:8]).stdout
    assert "state:        closed" in ended
    assert "close reason: fixed by hand" in ended
    assert "after 3m by cli:" in ended and ended.count("fixed by hand") == 2
    assert ops(environ, "incidents").stdout.splitlines()[0] == \
        "1 open incident (1 acknowledged)"


def test_json(environ: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    ids = seed(pg_url, tmp_path)
    assert ops(environ, "incidents", "ack", ids["config-invalid"][:8]).returncode == 0
    out = ops(environ, "incidents", "--json")
    assert out.returncode == 0, out.stderr
    js = json.loads(out.stdout)
    assert set(js) == {"as_of", "closed_since", "count", "incidents"}
    assert js["count"] == 2 and js["closed_since"] is None
    by_kind = {i["kind"]: i for i in js["incidents"]}
    cfg = by_kind["config-invalid"]
    assert set(cfg) == {
        "id", "short_id", "state", "kind", "process", "account", "where", "detail",
        "opened_at", "age_s", "duration_s", "last_seen_at", "seen_by", "restarts",
        "dedupe_key", "opened_pid", "opened_host", "supervised", "acked_at", "acked_by",
        "closed_at", "closed_by", "close_reason"}
    assert (cfg["id"], cfg["short_id"], cfg["state"]) == (
        ids["config-invalid"], ids["config-invalid"][:8], "acked")
    assert cfg["detail"] == CONFIG_DETAIL  # the full text
    assert cfg["seen_by"] == ["large-dispatcher", "large-stream", "tiny-stream"]
    assert cfg["acked_by"].startswith("cli:") and cfg["closed_at"] is None
    assert 700 < cfg["age_s"] < 800 and cfg["supervised"] is False
    assert by_kind["position-drift"]["state"] == "open"
    assert by_kind["position-drift"]["where"] == "large"

    every = json.loads(ops(environ, "incidents", "list", "--all", "--json").stdout)
    stalled = next(i for i in every["incidents"] if i["kind"] == "stalled")
    assert (stalled["state"], stalled["closed_by"], stalled["close_reason"]) == (
        "closed", "watchdog", "heartbeats again for 30s")
    assert 3590 < stalled["duration_s"] < 3610
    one = json.loads(ops(environ, "incidents", "show", ids["stalled"][:8], "--json").stdout)
    assert one == {**stalled, "age_s": one["age_s"]}


def test_bad_ids_exit_2_naming_the_id(environ: dict[str, str], pg_url: str) -> None:
    for iid in ("abcd0000-0000-4000-8000-000000000001", "abcd1111-0000-4000-8000-000000000002"):
        query(pg_url, "INSERT INTO incidents (id, kind, detail, opened_at)"
                      " VALUES ($1::text::uuid, 'k', 'd', now())", iid)
    for command in (["show"], ["ack"], ["close", "--reason", "r"]):
        verb = command[0]
        malformed = ops(environ, "incidents", *command, "xyz!")
        assert malformed.returncode == 2, malformed
        assert malformed.stderr.startswith(f"ops incidents {verb}: error: incident id 'xyz!'")
        unknown = ops(environ, "incidents", *command, "ffff0000")
        assert unknown.returncode == 2
        assert "no incident with an id starting 'ffff0000'" in unknown.stderr
        ambiguous = ops(environ, "incidents", *command, "abcd")
        assert ambiguous.returncode == 2
        assert "incident id 'abcd' is ambiguous" in ambiguous.stderr
        assert "abcd0000" in ambiguous.stderr and "abcd1111" in ambiguous.stderr
        assert malformed.stdout == unknown.stdout == ambiguous.stdout == ""
    assert query(pg_url, "SELECT count(*) AS n FROM incidents WHERE closed_at IS NOT NULL"
                         " OR acked_at IS NOT NULL")[0]["n"] == 0


def test_bad_arguments_exit_2(environ: dict[str, str], pg_url: str, tmp_path: Path) -> None:
    ids = seed(pg_url, tmp_path)
    empty = ops(environ, "incidents", "close", ids["position-drift"][:8], "--reason", "  ")
    assert empty.returncode == 2
    assert empty.stderr.startswith("ops incidents close: error: --reason must say why")
    missing = ops(environ, "incidents", "close", ids["position-drift"][:8])
    assert missing.returncode == 2 and "--reason" in missing.stderr
    bad_since = ops(environ, "incidents", "--since", "yesterday")
    assert bad_since.returncode == 2 and "--since 'yesterday'" in bad_since.stderr
    both = ops(environ, "incidents", "list", "--all", "--since", "1h")
    assert both.returncode == 2
    assert query(pg_url, "SELECT count(*) AS n FROM incidents WHERE closed_at IS NULL")[0][
        "n"] == 2


def test_config_error_exits_with_the_config_code(environ: dict[str, str],
                                                 tmp_path: Path) -> None:
    bad = tmp_path / "ops.toml"
    bad.write_text("[accounts.large]\nsecret_id = 3\n")
    out = ops({**environ, "OPS_CONFIG": str(bad)}, "incidents")
    assert out.returncode == EXIT_CONFIG == 78
    assert out.stderr.startswith("ops incidents list: error:")
    assert str(bad) in out.stderr and out.stdout == ""


def test_postgres_unreachable_exits_1_and_says_so(environ: dict[str, str]) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    url = "postgresql://ops:s3cret-pw-123@127.0.0.1:9/ops"
    for command in (["list"], ["show", "abcd1234"], ["ack", "abcd1234"],
                    ["close", "abcd1234", "--reason", "r"]):
        out = ops({**environ, "OPS_DATABASE_URL": url}, "incidents", *command)
        assert out.returncode == 1, (command, out)
        assert out.stderr.startswith(f"ops incidents {command[0]}: error: Postgres is "
                                     "unreachable (postgresql://ops:***@127.0.0.1:9/ops: ")
        assert "incidents live there: nothing was" in out.stderr
        assert "s3cret" not in out.stderr + out.stdout and out.stdout == ""
