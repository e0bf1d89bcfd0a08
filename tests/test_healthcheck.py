"""`ops health` without a role running: the heartbeat file's format, its atomic replace,
the verdicts, usage errors, and what the command costs (imports, wall time).

The check against real role processes (SIGSTOP, standby, failing, Postgres down) is in
tests/test_healthcheck_process.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ops.core.config import ACCOUNT_NAME_PATTERN
from ops.supervise.healthcheck import (
    ACCOUNT_NAME_RE,
    EXIT_HEALTHY,
    EXIT_NO_FILE,
    EXIT_UNHEALTHY,
    HealthFile,
    HealthFileError,
    check,
    health_path,
    judge,
    remove_health_file,
    write_health_file,
)

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_767_312_000.0
BEAT = HealthFile(process="large-stream", pid=4242, ts=NOW - 0.8, interval_s=1.0,
                  stale_s=5.0, active=True, failing=False, failing_reason=None)
#: Modules `ops health` must never load: the broker SDK (and its pydantic), the database
#: driver, the config loader, the UI, supervisord's client, pandas/numpy.
HEAVY = ("alpaca", "asyncpg", "pydantic", "pydantic_core", "textual", "tui", "supervisor",
         "pandas", "numpy", "ops.runtime.config", "ops.store", "ops.broker", "ops.roles")


def test_the_file_is_one_json_object_with_the_agreed_fields(tmp_path: Path) -> None:
    path = health_path(tmp_path, "large-stream")
    assert path == tmp_path / "run" / "health" / "large-stream.json"
    write_health_file(path, BEAT)  # creates run/health
    raw = json.loads(path.read_text())
    assert raw == {"process": "large-stream", "pid": 4242, "ts": NOW - 0.8, "interval_s": 1.0,
                   "stale_s": 5.0, "active": True, "failing": False, "failing_reason": None}
    assert HealthFile.parse(path.read_text(), str(path)) == BEAT
    assert os.listdir(path.parent) == ["large-stream.json"]  # no temp file left behind


@pytest.mark.parametrize(("text", "expected"), [
    ("{", "not JSON"),
    ("[1]", "expected a JSON object, got [1]"),
    ('{"pid": 1}', "field 'process' is missing"),
    (BEAT.to_json().replace('"pid":4242', '"pid":"4242"'), "field 'pid' must be an integer, "
                                                            "got '4242'"),
    (BEAT.to_json().replace('"pid":4242', '"pid":true'), "field 'pid' must be an integer"),
    (BEAT.to_json().replace('"active":true', '"active":1'), "field 'active' must be true or "
                                                            "false, got 1"),
    (BEAT.to_json().replace('"stale_s":5.0', '"stale_s":-1'), "field 'stale_s' must be a "
                                                              "finite number >= 0, got -1"),
    (BEAT.to_json().replace('"failing_reason":null', '"failing_reason":3'),
     "field 'failing_reason' must be a string or null, got 3"),
])
def test_a_malformed_file_is_unhealthy_naming_file_field_and_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = health_path(tmp_path, "large-stream")
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(HealthFileError, match="large-stream.json"):
        HealthFile.parse(text, str(path))
    verdict = check(tmp_path, "stream", "large", now=NOW)
    assert verdict.code == EXIT_UNHEALTHY
    assert verdict.line.startswith(f"unhealthy: {path}: ") and expected in verdict.line


def test_readers_never_see_a_partial_file_while_it_is_replaced(tmp_path: Path) -> None:
    """A reader in another thread, reading as fast as it can while the file is rewritten
    2,000 times with texts of varying length, always parses a whole beat."""
    path = health_path(tmp_path, "large-dispatcher")
    write_health_file(path, BEAT)
    done = threading.Event()
    seen: set[int] = set()
    errors: list[str] = []

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(HealthFile.parse(path.read_text(), str(path)).pid)
            except (OSError, HealthFileError) as exc:
                errors.append(str(exc))
    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(2000):
            reason = "x" * (i % 300) if i % 2 else None
            write_health_file(path, replace(BEAT, pid=i, failing=reason is not None,
                                            failing_reason=reason))
    finally:
        done.set()
        t.join()
    assert errors == []
    assert len(seen) > 1  # the reader really overlapped the writes
    assert sorted(os.listdir(path.parent)) == ["large-dispatcher.json"]


def test_verdicts() -> None:
    ok = judge(BEAT, now=NOW, ready=False)
    assert (ok.code, ok.line) == (EXIT_HEALTHY, "ok: large-stream heartbeat 0.8s ago (active)")
    assert judge(BEAT, now=NOW, ready=True).code == EXIT_HEALTHY

    stale = judge(BEAT, now=NOW + 11.5, ready=False)
    assert (stale.code, stale.line) == (
        EXIT_UNHEALTHY, "unhealthy: large-stream heartbeat 12.3s old (stale after 5s)")
    # Exactly at the bound is still fresh; a beat from far in the future is not.
    assert judge(BEAT, now=BEAT.ts + 5.0, ready=False).code == EXIT_HEALTHY
    future = judge(BEAT, now=BEAT.ts - 6.0, ready=False)
    assert (future.code, future.line) == (
        EXIT_UNHEALTHY, "unhealthy: large-stream heartbeat dated 6.0s in the future and not "
                        "rewritten since (the clock stepped back?)")
    assert judge(BEAT, now=BEAT.ts - 1.0, ready=False).line.endswith("0.0s ago (active)")

    cause = ("the broker rejected large's API key (401): rotate the secret "
             "ops-pipeline/alpaca (its last 3 sync run(s) failed;\nlast error: x)")
    failing = judge(replace(BEAT, process="large-dispatcher", failing=True,
                            failing_reason=cause), now=NOW, ready=False)
    assert failing.code == EXIT_UNHEALTHY
    assert failing.line == ("unhealthy: large-dispatcher failing: the broker rejected large's "
                            "API key (401): rotate the secret ops-pipeline/alpaca (its last 3 "
                            "sync run(s) failed; last error: x)")  # one line
    # Stale wins over failing: a failing flag in a stale file is old news.
    assert "stale after" in judge(replace(BEAT, failing=True), now=NOW + 30, ready=False).line

    standby = replace(BEAT, active=False)
    assert judge(standby, now=NOW, ready=False) == judge(standby, now=NOW, ready=False)
    live = judge(standby, now=NOW, ready=False)
    assert (live.code, live.line) == (EXIT_HEALTHY,
                                      "ok: large-stream heartbeat 0.8s ago (standby)")
    ready = judge(standby, now=NOW, ready=True)
    assert ready.code == EXIT_UNHEALTHY
    assert ready.line.startswith("not ready: large-stream is not active: it does not "
                                 "hold its singleton lock")


def test_no_file_and_bad_usage_exit_2(tmp_path: Path) -> None:
    missing = check(tmp_path, "stream", "large")
    assert missing.code == EXIT_NO_FILE
    assert missing.line == (f"no heartbeat file {tmp_path}/run/health/large-stream.json "
                            "(not started yet?)")
    for role, account, problem in [
        ("stream", None, "role 'stream' runs per account: give --account"),
        ("monitor", "large", "role 'monitor' is shared by every account: run it without "
                             "--account"),
        ("stream", "../etc", "invalid account name '../etc'"),
        ("bogus", None, "unknown role 'bogus'"),
    ]:
        verdict = check(tmp_path, role, account)
        assert verdict.code == EXIT_NO_FILE
        assert verdict.line.startswith(f"ops health: {problem}"), verdict.line
    write_health_file(health_path(tmp_path, "monitor"), replace(BEAT, process="monitor",
                                                                 ts=time.time()))
    assert check(tmp_path, "monitor", None).line.startswith("ok: monitor heartbeat")
    write_health_file(health_path(tmp_path, "signal-engine"),
                      replace(BEAT, process="signal-engine", ts=time.time()))
    assert check(tmp_path, "signal-engine", None).code == EXIT_HEALTHY


def test_the_account_name_rule_is_the_configs() -> None:
    assert ACCOUNT_NAME_RE.pattern == ACCOUNT_NAME_PATTERN


def test_only_the_writer_removes_its_file(tmp_path: Path) -> None:
    path = health_path(tmp_path, "large-stream")
    write_health_file(path, BEAT)
    assert remove_health_file(path, pid=4243) is False  # another copy's (a standby's) stop
    assert path.exists()
    assert remove_health_file(path, pid=4242) is True
    assert not path.exists()
    assert remove_health_file(path, pid=4242) is False  # idempotent


def _ops_health(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    environ["OPS_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "ops", "health", *args], capture_output=True,
                          text=True, cwd=ROOT, env=environ, timeout=30)


@pytest.mark.integration
def test_the_command_is_fast_and_loads_nothing_heavy(tmp_path: Path) -> None:
    write_health_file(health_path(tmp_path, "large-stream"), replace(BEAT, ts=time.time()))
    # What the command loads: main() in a fresh interpreter, then its sys.modules.
    code = (
        "import sys\n"
        "from ops.cli import main\n"
        "code = main(['health', 'stream', '--account', 'large'])\n"
        f"heavy = {HEAVY!r}\n"
        "print(code, sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    environ["OPS_HOME"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env=environ, timeout=30, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ok: large-stream heartbeat"), out.stdout
    assert lines[1] == "0 []", f"ops health loaded heavy modules: {lines[1]}"

    # The whole command as an orchestrator runs it: wall time of the best of 3 (a shared
    # machine's load spikes are not the command's cost; bench/health.py reports the spread).
    walls = []
    for _ in range(3):
        t0 = time.monotonic()
        proc = _ops_health(tmp_path, "stream", "--account", "large")
        walls.append(time.monotonic() - t0)
        assert proc.returncode == EXIT_HEALTHY, proc.stdout + proc.stderr
        assert proc.stdout.count("\n") == 1 and proc.stderr == ""
    assert min(walls) < 1.0, walls


@pytest.mark.integration
def test_the_command_exit_codes(tmp_path: Path) -> None:
    none = _ops_health(tmp_path, "dispatcher", "--account", "large")
    assert none.returncode == EXIT_NO_FILE
    assert none.stdout.startswith("no heartbeat file ") and "large-dispatcher.json" in none.stdout
    write_health_file(health_path(tmp_path, "large-dispatcher"),
                      replace(BEAT, process="large-dispatcher", ts=time.time() - 30))
    stale = _ops_health(tmp_path, "dispatcher", "--account", "large")
    assert stale.returncode == EXIT_UNHEALTHY
    assert "stale after 5s" in stale.stdout
    usage = _ops_health(tmp_path, "dispatcher")
    assert usage.returncode == EXIT_NO_FILE
    assert "runs per account: give --account" in usage.stdout
    bad_role = _ops_health(tmp_path, "watchdog")
    assert bad_role.returncode == 2 and "invalid choice" in bad_role.stderr
