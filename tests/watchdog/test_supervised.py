"""The watchdog under a real supervisord, with real processes, signals and Postgres.

One stack per module (supervisord, an embedded Postgres, a local webhook receiver) runs
`ops watchdog` as its event listener and four stand-in roles (tests/watchdog/worker.py):
- large-dispatcher        normal; SIGSTOPped by the tests
- large-position-manager  normal; its job is made to hang while its heartbeat goes on
- tiny-dispatcher         crashes on start (FATAL)
- tiny-position-manager   market closed: an expected idle
The watchdog runs with the *default* heartbeat bounds (5 s stale, 15 s startup grace).
The tests run in any order (the suite shuffles them): each waits for the state it needs,
judges only the incidents and alerts of its own episode, and puts back what it changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.embedded import EmbeddedPostgres
from ops.store.migrate import migrate
from ops.store.postgres import connect
from ops.supervise.supervisor import SupervisorClient, eventlistener_section, socket_path
from tests.conftest import TEST_PG_OPTIONS
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.system  # a real supervisord running the fleet
T = TypeVar("T")

PROGRAMS = {  # name -> (account, role, mode)
    "large-dispatcher": ("large", "dispatcher", "normal"),
    "large-position-manager": ("large", "position-manager", "normal"),
    "tiny-dispatcher": ("tiny", "dispatcher", "crash"),
    "tiny-position-manager": ("tiny", "position-manager", "closed"),
}


class Receiver:
    """A real HTTP webhook receiver on loopback (a thread in the test process)."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.gets: list[float] = []  # dead-man pings (monotonic arrival times)
        bodies, gets = self.bodies, self.gets

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                n = int(self.headers.get("Content-Length", "0"))
                bodies.append(json.loads(self.rfile.read(n)))
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                gets.append(time.monotonic())
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def texts(self, since: int = 0) -> list[str]:
        """Alert texts, from the `since`-th received on."""
        return [str(b["text"]) for b in list(self.bodies)[since:]]

    def texts_of(self, incident: Any) -> list[str]:
        """Alert texts about one open incident row: its opening alert (its process and
        opening time) and every later alert about its process."""
        bodies = list(self.bodies)
        first = next((i for i, b in enumerate(bodies) if b["alert"]["event"] == "opened"
                      and b["alert"]["process"] == incident["process"]
                      and datetime.fromisoformat(b["alert"]["opened_at"])
                      == incident["opened_at"]), len(bodies))
        return [str(b["text"]) for b in bodies[first:]
                if b["alert"]["process"] == incident["process"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Stack:
    env: RuntimeEnv
    pg: EmbeddedPostgres
    sup: SupervisorClient
    receiver: Receiver
    metrics_port: int
    proc: subprocess.Popen[bytes]

    def query(self, sql: str, *args: Any) -> list[Any]:
        async def run() -> list[Any]:
            conn = await connect(self.pg.url())
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def incidents(self, process: str) -> list[Any]:
        return self.query("SELECT * FROM incidents WHERE process = $1 ORDER BY opened_at",
                          process)

    def pid(self, name: str) -> int:
        info = self.sup.process(f"{PROGRAMS[name][0]}:{name}")
        return info.pid if info.state in ("RUNNING", "STARTING") else 0

    def metrics(self) -> dict[tuple[str, str], float]:
        """(metric name, process label) -> value, from a real scrape over loopback."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        out = {}
        for line in text.splitlines():
            m = re.match(r'^(\w+)(?:\{([^}]*)\})? (\S+)$', line)
            if m:
                labels = m.group(2) or ""
                proc = re.search(r'process="([^"]*)"', labels)
                status = re.search(r'status="([^"]*)"', labels)
                key = m.group(1) + (f":{status.group(1)}" if status else "")
                out[(key, proc.group(1) if proc else "")] = float(m.group(3))
        return out

    def metrics_if_up(self) -> dict[tuple[str, str], float]:
        """`metrics()`, or {} while the endpoint is not listening yet (watchdog starting)."""
        try:
            return self.metrics()
        except urllib.error.URLError as exc:
            if not isinstance(exc.reason, ConnectionRefusedError):
                raise
            return {}

    def log(self) -> str:
        path = self.env.log_dir / "watchdog.log"
        return path.read_text() if path.exists() else ""


def poll(what: str, check: Callable[[], T], timeout_s: float, interval_s: float = 0.2) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:g}s (last: {got!r})")
        time.sleep(interval_s)


def _config(home: Path, webhook: str, metrics_port: int) -> Path:
    text = (ROOT / "conf" / "ops.toml").read_text()
    text = re.sub(r"dispatcher_s = \d+", "dispatcher_s = 1", text)
    text = re.sub(r"position_manager_s = \d+", "position_manager_s = 1", text)
    text = text.replace("webhook_urls = []", f'webhook_urls = ["{webhook}"]')
    text = text.replace("deadman_interval_s = 60",
                        f'deadman_url = "{webhook.rsplit("/hook", 1)[0]}/ping/abc"\n'
                        "deadman_interval_s = 1")
    text = text.replace("position-manager = 30", "position-manager = 12")
    text = re.sub(r"\[metrics\]\nenabled = false\nhost = \"127.0.0.1\"\nport = 9464",
                  f'[metrics]\nenabled = true\nhost = "127.0.0.1"\nport = {metrics_port}', text)
    assert f"port = {metrics_port}" in text and webhook in text
    path = home / "ops.toml"
    path.write_text(text)
    return path


def _supervisord_conf(env: RuntimeEnv) -> Path:
    environment = ",".join(f'{k}="{v}"' for k, v in {
        "OPS_HOME": str(env.home), "OPS_CONFIG": str(env.config_path),
        "OPS_DATABASE_URL": str(env.database_url).replace("%", "%%"),
        "PYTHONUNBUFFERED": "1"}.items())
    parts = [
        f"[unix_http_server]\nfile={socket_path(env)}\nchmod=0700\n",
        f"[supervisord]\nlogfile={env.log_dir / 'supervisord.log'}\n"
        f"pidfile={env.run_dir / 'supervisord.pid'}\nchildlogdir={env.log_dir}\n"
        f"nodaemon=true\nenvironment={environment}\n",
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
    ]
    for name, (account, role, mode) in PROGRAMS.items():
        cmd = (f"{sys.executable} -m tests.watchdog.worker --process {name} "
               f"--account {account} --role {role} --interval 1 --mode {mode}")
        parts.append(
            f"[program:{name}]\ncommand={cmd}\ndirectory={ROOT}\nautorestart=true\n"
            f"startsecs={5 if mode == 'crash' else 1}\nstartretries=2\nstopwaitsecs=3\n"
            "redirect_stderr=true\n"
            f"stdout_logfile={env.log_dir / name}.log\n")
    for account in ("large", "tiny"):
        names = ",".join(n for n, v in PROGRAMS.items() if v[0] == account)
        parts.append(f"[group:{account}]\nprograms={names}\n")
    parts.append(eventlistener_section(env, sys.executable).replace(
        f"directory={Path.cwd()}", f"directory={ROOT}"))
    path = env.home / "supervisord.conf"
    path.write_text("\n".join(parts))
    return path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    home = Path(tempfile.mkdtemp(prefix="ops-test-wd-", dir="/tmp"))
    pg = EmbeddedPostgres(home / "pg", options=TEST_PG_OPTIONS)
    receiver = Receiver()
    proc: subprocess.Popen[bytes] | None = None
    try:
        pg.start()
        asyncio.run(migrate(pg.url()))
        metrics_port = free_port()
        config = _config(home, f"http://127.0.0.1:{receiver.port}/hook/T0K3N", metrics_port)
        env = RuntimeEnv(config_path=config, home=home, database_url=pg.url())
        for d in (env.log_dir, env.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        conf = _supervisord_conf(env)
        proc = subprocess.Popen([sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
                                cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sup = SupervisorClient(socket_path(env), timeout_s=5)
        poll("supervisord up", lambda: socket_path(env).exists() and sup.state() == "RUNNING",
             20)
        ready = Stack(env, pg, sup, receiver, metrics_port, proc)
        # Whichever test runs first finds the watchdog judging: its first pass published.
        poll("the watchdog's first pass in its metrics", lambda: any(
            p == "large-dispatcher" for _, p in ready.metrics_if_up()), 30)
        yield ready
    finally:
        if proc is not None:
            with_timeout = proc.poll() is None
            if with_timeout:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        receiver.close()
        pg.stop(mode="immediate")
        sup_log = home / "log" / "supervisord.log"
        stopped = [line for line in (sup_log.read_text() if sup_log.exists() else "").splitlines()
                   if "stopped: watchdog" in line]
        if os.environ.get("KEEP_WD_LOG"):
            shutil.copytree(home / "log", os.environ["KEEP_WD_LOG"], dirs_exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
    # On supervisord's shutdown the listener stops cleanly (its protocol thread included).
    assert stopped and stopped[-1].endswith("(exit status 0)"), stopped


def test_eventlistener_section_keeps_stdout_for_the_protocol(tmp_path: Path) -> None:
    env = RuntimeEnv(config_path=tmp_path / "ops.toml", home=tmp_path, database_url=None)
    text = eventlistener_section(env, "/usr/bin/python3")
    assert text.startswith("[eventlistener:watchdog]\n")
    assert "events=TICK_5,PROCESS_STATE\n" in text
    assert "redirect_stderr=false\n" in text and "stdout_logfile=NONE\n" in text
    assert f"stderr_logfile={tmp_path / 'log' / 'watchdog.log'}\n" in text
    assert "command=/usr/bin/python3 -m ops watchdog\n" in text


def test_process_that_crashes_on_start_is_one_incident_reported_fatal(stack: Stack) -> None:
    info = poll("tiny-dispatcher FATAL",
                lambda: (i := stack.sup.process("tiny:tiny-dispatcher")).state == "FATAL" and i,
                30)
    assert info
    # An earlier episode (ended by test_deadman_pings_once_everything_is_healthy taking the
    # group out for a while) is closed: this episode's incident is the one open.
    opened = poll("an open incident",
                  lambda: [r for r in stack.incidents("tiny-dispatcher") if r["closed_at"] is None],
                  15)
    assert len(opened) == 1, "a crash loop is ONE incident"
    row = opened[0]
    assert row["kind"] in ("crash-loop", "fatal")
    assert row["dedupe_key"] == "watchdog:tiny-dispatcher"
    assert row["restarts"] >= 2  # supervisord's own retries, counted on the one incident
    # FATAL noted on it (its detail moves on with the watchdog's start attempts; the alert
    # that said so stays).
    poll("FATAL in the incident's alerts",
         lambda: any("FATAL" in t for t in stack.receiver.texts_of(row)), 15)


def test_sigstopped_dispatcher_is_restarted_within_10s_and_incident_closes(
    stack: Stack,
) -> None:
    name = "large-dispatcher"
    # Past the startup grace, and on schedule (with the default bounds).
    poll("large-dispatcher running past its grace",
         lambda: (i := stack.sup.process(f"large:{name}")).uptime_s is not None
         and i.uptime_s > 16, 40)
    poll("large-dispatcher ok", lambda: stack.metrics().get(
        ("ops_process_status:ok", name)) == 1.0, 15)
    poll("no incident open on large-dispatcher", lambda: all(
        r["closed_at"] is not None for r in stack.incidents(name)), 45)
    before = {r["id"] for r in stack.incidents(name)}
    alerts = len(stack.receiver.bodies)
    old = stack.pid(name)
    os.kill(old, signal.SIGSTOP)
    t0 = time.monotonic()
    new = poll("a new large-dispatcher pid", lambda: (p := stack.pid(name)) != old and p, 10,
               interval_s=0.05)
    took = time.monotonic() - t0
    print(f"\nSIGSTOP -> restarted (new pid) in {took:.2f}s")
    assert new != old
    # The watchdog opens the incident, then restarts the process and counts the restart on
    # it: wait for the count (CI, loaded, saw the row between the two writes).
    def counted() -> list[Any]:
        rs = [r for r in stack.incidents(name) if r["id"] not in before]
        return rs if all(r["restarts"] >= 1 for r in rs) else []

    rows = poll("a hung incident with its restart counted", counted, 5)
    assert len(rows) == 1 and rows[0]["kind"] == "hung" and rows[0]["restarts"] == 1
    assert f"killed pid {old}" in rows[0]["detail"]
    closed = poll("the incident closed", lambda: [r for r in stack.incidents(name)
                                                  if r["id"] == rows[0]["id"]
                                                  and r["closed_at"] is not None], 45)
    assert closed[0]["closed_at"] > closed[0]["opened_at"]
    assert any(t.startswith("[ops-pipeline") and "INCIDENT OPEN hung on large-dispatcher" in t
               for t in stack.receiver.texts(alerts))
    poll("the close alerted", lambda: any("RESOLVED hung on large-dispatcher" in t
                                          for t in stack.receiver.texts(alerts)), 10)
    assert "T0K3N" not in stack.log(), "the webhook token must never reach the log"


def test_job_hung_with_live_heartbeat_is_restarted_and_its_gap_grows_in_metrics(
    stack: Stack,
) -> None:
    name = "large-position-manager"
    poll("position-manager ok", lambda: stack.metrics().get(
        ("ops_process_status:ok", name)) == 1.0, 40)
    # The hang must be an episode of its own: an earlier one (the host too slow for a
    # heartbeat bound a moment ago, say) has ended, and its incident is not this one's.
    poll("no incident open on position-manager", lambda: all(
        r["closed_at"] is not None for r in stack.incidents(name)), 45)
    before = {r["id"] for r in stack.incidents(name)}
    old = stack.pid(name)
    (stack.env.home / f"hang-{name}").write_text(str(old))
    # While hung: the heartbeat stays fresh and the gap grows, scrape after scrape.
    key = ("ops_last_run_age_seconds", name)

    def scrape_when(cond: Callable[[dict[tuple[str, str], float]], bool]) -> Callable[
            [], dict[tuple[str, str], float]]:
        return lambda: (m if cond(m := stack.metrics()) else {})

    first = poll("a gap", scrape_when(lambda m: m.get(key, 0.0) > 2.0), 15)
    second = poll("the gap growing", scrape_when(lambda m: m.get(key, 0.0) >= first[key] + 2), 8)
    assert second[("ops_heartbeat_age_seconds", name)] < 3.0, "heartbeat stays fresh"
    assert second[("ops_process_status:stalled", name)] == 0.0  # not yet past the gap bound
    assert stack.pid(name) == old
    new = poll("restarted", lambda: (p := stack.pid(name)) != old and p, 40)
    assert new != old
    # One hang, one incident (a slow restart, a second kill, are counted on it), still
    # open once the new process is judged ok: it closes only after its settle time.
    poll("the new position-manager ok", lambda: stack.pid(name) not in (0, old)
         and stack.metrics().get(("ops_process_status:ok", name)) == 1.0, 30)
    rows = [r for r in stack.incidents(name) if r["id"] not in before]
    assert len(rows) == 1 and rows[0]["kind"] == "stalled", rows
    assert "heartbeat fresh but no completed run" in rows[0]["detail"]
    assert f"killed pid {old}" in rows[0]["detail"] and rows[0]["restarts"] >= 1
    assert [r["id"] for r in stack.incidents(name) if r["closed_at"] is None] == [rows[0]["id"]]


def test_market_closed_is_an_expected_idle_not_an_incident(stack: Stack) -> None:
    name = "tiny-position-manager"
    # Idle long enough to have been judged: past its startup grace plus the time a first
    # run may take (15 + 11 s) and its 12 s gap bound, without one completed run doing
    # work (a stall verdict would have killed it before 30 s).
    poll("tiny-position-manager RUNNING for 30s", lambda: (
        i := stack.sup.process(f"tiny:{name}")).state == "RUNNING"
        and i.uptime_s is not None and i.uptime_s > 30, 75)
    m = stack.metrics()
    assert m[("ops_process_status:idle-market-closed", name)] == 1.0
    # Never an incident for being idle. Only a stale heartbeat ("hung": the host too slow
    # for the 5 s bound, nothing to do with the market) may have restarted it earlier;
    # idle counts as healthy, so that one closes (after its 20 s settle time).
    rows = stack.incidents(name)
    assert all(r["kind"] == "hung" for r in rows), rows
    poll("no incident open on tiny-position-manager", lambda: all(
        r["closed_at"] is not None for r in stack.incidents(name)), 30)
    outcomes = stack.query("SELECT DISTINCT outcome FROM runs WHERE process = $1", name)
    assert [r["outcome"] for r in outcomes] == ["idle-market-closed"]


def test_incidents_opened_by_roles_are_alerted_open_and_closed(stack: Stack) -> None:
    stack.query("INSERT INTO incidents (id, kind, account, detail, opened_at, dedupe_key)"
                " VALUES (gen_random_uuid(), 'position-drift', 'large', 'AAPL: broker 10,"
                " database 12', now(), 'drift:large')")
    poll("the role's incident alerted", lambda: any(
        "INCIDENT OPEN position-drift on large: AAPL" in t for t in stack.receiver.texts()), 10)
    stack.query("UPDATE incidents SET closed_at = now() WHERE dedupe_key = 'drift:large'")
    poll("its closing alerted", lambda: any(
        "RESOLVED position-drift on large" in t for t in stack.receiver.texts()), 10)


def test_no_deadman_ping_while_anything_is_unhealthy(stack: Stack) -> None:
    # tiny-dispatcher crashes on start: once the watchdog holds its incident open, the
    # outside world must hear silence, through passes the pinger (1 s) could have pinged in.
    name = "tiny-dispatcher"
    poll("tiny-dispatcher's incident open", lambda: any(
        r["closed_at"] is None for r in stack.incidents(name)), 60)
    passes: set[float] = set()

    def passes_after(first: float, n: int) -> bool:
        passes.add(stack.metrics()[("ops_watchdog_last_pass_timestamp_seconds", "")])
        return len({p for p in passes if p > first}) >= n

    start = stack.metrics()[("ops_watchdog_last_pass_timestamp_seconds", "")]
    poll("a watchdog pass after the incident", lambda: passes_after(start, 1), 15)
    gets, pings = len(stack.receiver.gets), stack.metrics()[("ops_deadman_pings_total", "")]
    mark = max(passes)
    poll("two more watchdog passes", lambda: passes_after(mark, 2), 30)
    assert any(r["closed_at"] is None for r in stack.incidents(name)), "still unhealthy"
    assert stack.receiver.gets[gets:] == []
    assert stack.metrics()[("ops_deadman_pings_total", "")] == pings


def test_postgres_stopped_the_watchdog_works_from_the_buffer(stack: Stack) -> None:
    name = "large-dispatcher"
    poll("large-dispatcher past its grace",
         lambda: (i := stack.sup.process(f"large:{name}")).uptime_s is not None
         and i.uptime_s > 16, 40)
    poll("large-dispatcher ok", lambda: stack.metrics().get(
        ("ops_process_status:ok", name)) == 1.0, 30)
    before = len(stack.incidents(name))
    stack.pg.stop(mode="fast")
    try:
        poll("the watchdog reads from the buffer",
             lambda: stack.metrics().get(("ops_database_reachable", "")) == 0.0, 15)
        old = stack.pid(name)
        os.kill(old, signal.SIGSTOP)
        t0 = time.monotonic()
        poll("restarted during the outage", lambda: (p := stack.pid(name)) != old and p, 10,
             interval_s=0.05)
        print(f"\nSIGSTOP -> restarted during a Postgres outage in {time.monotonic() - t0:.2f}s")

        async def buffered() -> list[Any]:
            async with await Store.open(stack.env, process="test-reader") as store:
                snap = await store.open_incidents()
                assert snap.source == "buffer"
                return [i for i in snap.rows if i.process == name]

        rows = poll("the incident in the buffer", lambda: asyncio.run(buffered()), 10)
        assert rows[0].kind == "hung"
        assert "hung on large-dispatcher" in stack.log()
        # The outage itself is an incident too, and its alert does not need Postgres.
        poll("a database incident", lambda: "INCIDENT OPEN database-unreachable" in stack.log(),
             15)
        poll("its alert", lambda: any("database-unreachable" in t
                                      for t in stack.receiver.texts()), 10)
    finally:
        stack.pg.start()
    rows = poll("the incident replayed into Postgres",
                lambda: r if len(r := stack.incidents(name)) > before else [], 30)
    assert rows[-1]["kind"] == "hung"
    db = poll("the database incident closed, in Postgres", lambda: [
        r for r in stack.query("SELECT * FROM incidents WHERE kind = 'database-unreachable'")
        if r["closed_at"] is not None], 30)
    assert len(db) == 1 and db[0]["closed_at"] > db[0]["opened_at"]


def test_deadman_pings_once_everything_is_healthy(stack: Stack) -> None:
    # Take the crashing group out of supervisord: its incident closes ("no longer
    # supervised"); once the restarted processes settle, all is healthy and pings flow.
    # The group comes back afterwards (the other tests run before or after this one).
    stack.sup._call("stopProcessGroup", "tiny", True)
    stack.sup._call("removeProcessGroup", "tiny")
    try:
        poll("the tiny-dispatcher incident closed", lambda: all(
            r["closed_at"] is not None for r in stack.incidents("tiny-dispatcher")), 10)
        gets = len(stack.receiver.gets)
        poll("dead-man pings", lambda: len(stack.receiver.gets) >= gets + 2, 45)
    finally:
        stack.sup._call("addProcessGroup", "tiny")
    got = stack.receiver.gets[gets:]
    gaps = [b - a for a, b in zip(got, got[1:], strict=False)]
    assert all(0.5 < g < 3.0 for g in gaps[-3:]), gaps
    assert "Traceback" not in stack.log(), "the watchdog logged an unexpected error"
