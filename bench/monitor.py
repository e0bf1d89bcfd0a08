"""`ops run monitor` after N passes over a stack of heartbeats: its RSS (issue 15's budget:
<= 70 MB), whether it grows pass after pass, and how long a pass takes.

The real command (`python -m ops run monitor`) against a durable embedded Postgres of the
benchmark's own, with the demo config in the orchestrated layout widened to ACCOUNTS
accounts (3 roles each, plus the signal engine). This process writes what the roles
would: a heartbeat row every 0.5 s and a completed run for every expected process, except
one that stops beating (the monitor opens "hung") and one that never starts ("missing"),
so the incident and alert paths run too. A webhook sink and a dead-man URL are served
here on loopback and the metrics endpoint is on, so the footprint is the production one.
`[monitor] interval_s` is 0.1 s so N passes take a minute, not an hour.

RSS from psutil after N/4 and after N passes (its heartbeat counter `monitor.passes`),
peak from VmHWM; a pass's duration from its run-ledger rows. Baseline, measured the same
way in the same run: an interpreter that imported the role runtime (`ops.roles.runtime`,
what every role process pays before its role's own code).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from bench.common import ROOT, BenchResult, Figure, bench_main, free_port, percentile, tmp_dir
from ops.core.models import Heartbeat, RunRecord
from ops.runtime.config import load_config
from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.postgres import connect
from ops.supervise.layout import Expected, orchestrated_processes

PASS_S = 0.1
BEAT_S = 0.5
STOPS_BEATING = "large-dispatcher"
NEVER_STARTS = "tiny-position-manager"


class Sinks:
    """Webhook and dead-man receiver on loopback: counts what arrives."""

    def __init__(self) -> None:
        self.posts = 0
        self.gets = 0
        sinks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sinks.posts += 1
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:  # noqa: N802
                sinks.gets += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def config_text(accounts: int, sinks: Sinks, metrics_port: int) -> str:
    """The demo config, orchestrated, with `accounts` accounts (copies of tiny)."""
    text = (ROOT / "conf" / "ops.toml").read_text()
    text = text.replace('layout = "supervisord"', 'layout = "orchestrated"')
    text = text.replace("[metrics]\nenabled = false", "[metrics]\nenabled = true")
    text = re.sub(r"(?m)^port = 9464$", f"port = {metrics_port}", text)
    text = text.replace("webhook_urls = []",
                        f'webhook_urls = ["http://127.0.0.1:{sinks.port}/hook"]\n'
                        f'deadman_url = "http://127.0.0.1:{sinks.port}/ping"')
    tiny = text[text.index("[accounts.tiny]"):text.index("# ------", text.index("[accounts.tiny]"))]
    extra = [tiny.replace("tiny", f"acct{i}").replace("PASIM0000002", f"PASIM{1000 + i:07d}")
             for i in range(accounts - 2)]
    return text.replace(tiny, tiny + "\n".join(extra)) + f"\n[monitor]\ninterval_s = {PASS_S}\n"


async def write_beats(env: RuntimeEnv, expected: list[Expected], stop: asyncio.Event) -> None:
    """What the roles would write: a heartbeat and a completed run each, every BEAT_S."""
    started = datetime.now(UTC)
    async with await Store.open(env, process="bench") as store:
        first = True
        while not stop.is_set():
            now = datetime.now(UTC)
            for e in expected:
                if e.name == NEVER_STARTS or (e.name == STOPS_BEATING and not first):
                    continue
                await store.heartbeat(Heartbeat(e.name, e.account, e.role, 1000, now,
                                                started, {"phase": "running"}))
                await store.record_run(RunRecord(
                    RunRecord.make_slot_id(e.account, e.name, now), e.name, e.account, e.role,
                    now, now, now, now, "ok", 0.01))
            first = False
            try:
                await asyncio.wait_for(stop.wait(), BEAT_S)
            except TimeoutError:
                pass


async def monitor_counter(url: str, key: str) -> float:
    conn = await connect(url)
    try:
        row = await conn.fetchrow("SELECT counters FROM heartbeats WHERE process = 'monitor'")
    finally:
        await conn.close()
    if row is None:
        return 0.0
    counters = row["counters"]
    if isinstance(counters, str):
        import json

        counters = json.loads(counters)
    value = counters.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


async def facts(url: str) -> dict[str, Any]:
    conn = await connect(url)
    try:
        durations = [float(r["d"]) for r in await conn.fetch(
            "SELECT extract(epoch FROM finished_at - started_at) AS d FROM runs "
            "WHERE process = 'monitor' AND outcome = 'ok'")]
        incidents = {r["kind"]: int(r["n"]) for r in await conn.fetch(
            "SELECT kind, count(*) AS n FROM incidents WHERE closed_at IS NULL GROUP BY kind")}
    finally:
        await conn.close()
    return {"durations_ms": [d * 1000 for d in durations], "incidents": incidents}


def mb(p: psutil.Process) -> float:
    return float(p.memory_info().rss) / 2**20


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def runtime_baseline_mb(environ: dict[str, str]) -> float:
    """RSS of an interpreter that imported the role runtime, as a role starts."""
    code = ("import ops.roles.runtime, sys, time; sys.stdout.write('ready\\n'); "
            "sys.stdout.flush(); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            env=environ, cwd=ROOT)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return mb(psutil.Process(proc.pid))
    finally:
        proc.kill()
        proc.wait()


def wait_for(cond: Any, what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:g}s waiting for {what}")
        time.sleep(0.2)


def run(quick: bool) -> BenchResult:
    from bench.common import durable_postgres

    accounts = 2 if quick else 10
    passes = 200 if quick else 1200  # quick too outlasts the 15 s startup grace: "missing"
    home = tmp_dir("ops-bench-monitor-")
    sinks = Sinks()
    metrics_port = free_port()
    with durable_postgres() as pg:
        url = pg.url()
        env = RuntimeEnv(config_path=home / "ops.toml", home=home / "home", database_url=url)
        env.config_path.write_text(config_text(accounts, sinks, metrics_port))
        config = load_config(env.config_path)
        expected = orchestrated_processes(config, monitor=False)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
        environ.update(OPS_HOME=str(env.home), OPS_CONFIG=str(env.config_path),
                       OPS_DATABASE_URL=url, PYTHONUNBUFFERED="1")
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()
        writer = threading.Thread(target=loop.run_until_complete,
                                  args=(write_beats(env, expected, stop),), daemon=True)
        writer.start()
        log = (home / "monitor.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "ops", "run", "monitor"], stdout=log,
                                stderr=subprocess.STDOUT, env=environ, cwd=ROOT)
        try:
            p = psutil.Process(proc.pid)

            def passed(n: int) -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"the monitor exited {proc.returncode}: "
                                       + (home / "monitor.log").read_text()[-2000:])
                return asyncio.run(monitor_counter(url, "monitor.passes")) >= n

            t0 = time.monotonic()
            wait_for(lambda: passed(passes // 4), f"{passes // 4} passes", 300)
            early = mb(p)
            wait_for(lambda: passed(passes), f"{passes} passes", 900)
            took = time.monotonic() - t0
            late, peak = mb(p), peak_mb(proc.pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=5) as resp:
                scraped = resp.read().count(b"\nops_process_status{")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            loop.call_soon_threadsafe(stop.set)
            writer.join(10)
        got = asyncio.run(facts(url))
        baseline = runtime_baseline_mb(environ)
    sinks.close()
    if not {"hung", "missing"} <= set(got["incidents"]):
        raise RuntimeError(f"expected hung and missing incidents, got {got['incidents']}")
    d = got["durations_ms"]
    n_procs = len(expected)
    return BenchResult("monitor", figures=[
        Figure("monitor RSS after N passes", "MB", round(late, 1), baseline=round(baseline, 1),
               baseline_name="interpreter importing ops.roles.runtime", target="<= 70",
               note=f"{passes} passes over {n_procs} processes' heartbeats ({accounts} "
                    f"accounts), webhook + dead-man + metrics on; peak {peak:.1f} MB"),
        Figure("monitor RSS growth", "MB", round(late - early, 1),
               note=f"from pass {passes // 4} to pass {passes}"),
        Figure("monitor pass p50", "ms", round(percentile(d, 50), 1),
               note=f"p99 {percentile(d, 99):.1f} ms over {len(d)} passes; {passes} passes "
                    f"in {took:.0f}s at interval {PASS_S}s"),
    ], params={"accounts": accounts, "processes": n_procs, "passes": passes,
               "incidents": got["incidents"], "alerts_posted": sinks.posts,
               "deadman_pings": sinks.gets, "metrics_series_status": scraped,
               "early_rss_mb": round(early, 1), "peak_rss_mb": round(peak, 1)})


def main() -> None:
    bench_main("monitor", run)


if __name__ == "__main__":
    main()
