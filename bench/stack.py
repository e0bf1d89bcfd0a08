"""Whole-stack benchmarks on the real demo (`ops up --demo`, a tmp OPS_HOME, a free
simulator port; `ops down` always runs after, even on failure):

- `ops up` to all-healthy (seconds). Baseline: one bare interpreter importing the stream
  role (the slowest single process start), same run.
- footprint: total RSS (and PSS, which counts shared pages once) of supervisord and every
  descendant, per-process RSS, and CPU of the whole stack over a quiet window. Baseline:
  as many bare `python` interpreters as the stack runs Python processes.
- detection, SIGSTOP: a role is SIGSTOPped; seconds until supervisord shows it RUNNING
  again under a new pid and it has written a heartbeat. Baseline: supervisord alone, which
  reports the stopped pid RUNNING throughout (verified during the same run).
- detection, hung job: both position managers' jobs block on a table lock held by the
  benchmark (heartbeats go on: "alive but not trading"); seconds until large-position-
  manager is restarted. The bound is configuration (watchdog.gap_bounds_s); the benchmark
  sets position-manager = 8 s and says so.
- which role processes import alpaca-py / textual / boto3 (import only what each role needs).
Targets: up <= 8 s; RSS <= 800 MB; detection <= 10 s.
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
import time
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed

from bench.common import ROOT, BenchResult, Figure, bench_main, free_port, tmp_dir
from ops.runtime.env import RuntimeEnv
from ops.store import embedded
from ops.store.postgres import connect
from ops.supervise.supervisor import SupervisorClient

PM_GAP_BOUND_S = 8
STOP_VICTIM = "tiny-dispatcher"
HUNG_VICTIM = "large-position-manager"
HEAVY_MODULES = ("alpaca", "textual", "boto3")
ENTRYPOINTS = {  # what each supervised program imports at start (lazy imports aside)
    "stream": "ops.roles.runtime, ops.roles.stream",
    "dispatcher": "ops.roles.runtime, ops.roles.dispatcher",
    "position-manager": "ops.roles.runtime, ops.roles.position_manager",
    "signal-engine": "ops.roles.runtime, ops.roles.signal_engine",
    "watchdog": "ops.roles.watchdog",
    "sim": "ops.commands.sim",
    "status": "ops.commands.status",
}


def make_home() -> tuple[RuntimeEnv, dict[str, str]]:
    home = tmp_dir("ops-bench-stack-")
    text = (ROOT / "conf" / "ops.toml").read_text().replace("8765", str(free_port()))
    text, n = re.subn(r"(?m)^position-manager = \d+", f"position-manager = {PM_GAP_BOUND_S}",
                      text)
    if n != 1:
        raise RuntimeError("conf/ops.toml: [watchdog.gap_bounds_s] position-manager not found")
    config = home / "ops.toml"
    config.write_text(text)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    environ.update(OPS_HOME=str(home), OPS_CONFIG=str(config))
    return RuntimeEnv(config_path=config, home=home, database_url=None), environ


def ops(environ: dict[str, str], *args: str,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ops", *args], capture_output=True, text=True,
                          env=environ, timeout=timeout, cwd=ROOT)


def label(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
    except psutil.Error:
        return "?"
    text = " ".join(cmd)
    if "supervisord" in text:
        return "supervisord"
    if "postgres" in (cmd[0] if cmd else "") or "postgres" in p.name():
        return "postgres"
    if " run " in text and "--account" in cmd:
        return f"{cmd[cmd.index('--account') + 1]}-{cmd[cmd.index('run') + 1]}"
    for word in ("signal-engine", "watchdog", " sim "):
        if word in text:
            return word.strip()
    return str(p.name())


def stack_processes(env: RuntimeEnv) -> list[psutil.Process]:
    pid = int((env.run_dir / "supervisord.pid").read_text().split()[0])
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def footprint(env: RuntimeEnv, window_s: float) -> dict[str, Any]:
    procs = stack_processes(env)
    before = {}
    for p in procs:
        try:
            before[p.pid] = sum(p.cpu_times()[:2])
        except psutil.Error:
            pass
    time.sleep(window_s)
    rss: dict[str, float] = {}
    pss_total = rss_total = cpu_s = 0.0
    measured = python = 0
    # Memory of the processes alive now (a role the watchdog restarted during the window
    # is counted as its new process); CPU over the window of those alive at both ends.
    for p in stack_processes(env):
        # A process may end at any point (a Postgres backend closing): counted only when
        # every figure of it was read.
        try:
            mem = p.memory_full_info()
            if p.pid in before:
                cpu_s += sum(p.cpu_times()[:2]) - before[p.pid]
            name = label(p)
            is_python = ("python" in p.name() or "ops" in p.name()
                         or name not in ("postgres", "supervisord"))
        except psutil.Error:
            continue
        measured += 1
        python += is_python
        rss[name] = rss.get(name, 0.0) + mem.rss / 1e6
        rss_total += mem.rss / 1e6
        pss_total += getattr(mem, "pss", mem.rss) / 1e6
    return {"rss_mb": rss_total, "pss_mb": pss_total, "cpu_pct": 100 * cpu_s / window_s,
            "per_process_mb": {k: round(v, 1) for k, v in sorted(rss.items())},
            "processes": measured, "python_processes": python}


def bare_interpreter_rss_mb() -> float:
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.5)
        return float(psutil.Process(p.pid).memory_info().rss / 1e6)
    finally:
        p.kill()
        p.wait()


def import_seconds(modules: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True, cwd=ROOT)
    return time.perf_counter() - t0


def heavy_imports() -> dict[str, list[str]]:
    out = {}
    for role, modules in ENTRYPOINTS.items():
        code = (f"import sys, json; import {modules}; "
                f"print(json.dumps([m for m in {HEAVY_MODULES!r} if m in sys.modules]))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              cwd=ROOT, check=True)
        out[role] = json.loads(proc.stdout)
    return out


def find(client: SupervisorClient, name: str) -> Any:
    return next(p for p in client.processes() if p.name == name)


async def heartbeat_after(env: RuntimeEnv, process: str, pid: int, deadline: float) -> bool:
    conn = await connect(embedded.embedded_url(env))
    try:
        while time.monotonic() < deadline:
            row = await conn.fetchrow("SELECT pid FROM heartbeats WHERE process = $1", process)
            if row is not None and row["pid"] == pid:
                return True
            await asyncio.sleep(0.1)
        return False
    finally:
        await conn.close()


def detect_sigstop(env: RuntimeEnv, timeout_s: float) -> dict[str, Any]:
    client = SupervisorClient.for_env(env)
    old = find(client, STOP_VICTIM)
    os.kill(old.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    seen_running_stopped = 0.0  # how long supervisord kept calling the stopped pid RUNNING
    new = None
    while time.monotonic() - t0 < timeout_s:
        info = find(client, STOP_VICTIM)
        if info.pid == old.pid and info.state == "RUNNING":
            seen_running_stopped = time.monotonic() - t0
        if info.state == "RUNNING" and info.pid not in (0, old.pid):
            new = info
            break
        time.sleep(0.1)
    if new is None:
        os.kill(old.pid, signal.SIGCONT)
        return {"restarted_s": None, "supervisord_running_s": seen_running_stopped}
    restarted = time.monotonic() - t0
    healthy = asyncio.run(heartbeat_after(env, STOP_VICTIM, new.pid, time.monotonic() + 30))
    return {"restarted_s": restarted, "healthy_s": time.monotonic() - t0 if healthy else None,
            "supervisord_running_s": seen_running_stopped}


async def detect_hung(env: RuntimeEnv, timeout_s: float) -> dict[str, Any]:
    client = SupervisorClient.for_env(env)
    old = find(client, HUNG_VICTIM)
    conn = await connect(embedded.embedded_url(env))
    try:
        tx = conn.transaction()
        await tx.start()
        # Writers block, readers do not: the position managers' sync hangs, heartbeats go on.
        await conn.execute("LOCK TABLE positions IN EXCLUSIVE MODE")
        t0 = time.monotonic()
        restarted = None
        while time.monotonic() - t0 < timeout_s:
            info = await asyncio.to_thread(find, client, HUNG_VICTIM)
            if info.pid not in (0, old.pid):
                restarted = time.monotonic() - t0
                break
            await asyncio.sleep(0.1)
        await tx.rollback()
    finally:
        await conn.close()
    return {"restarted_s": restarted, "gap_bound_s": PM_GAP_BOUND_S}


def run(quick: bool) -> BenchResult:
    res = BenchResult("stack", params={"window_s": 3 if quick else 20})
    env, environ = make_home()
    try:
        t0 = time.perf_counter()
        up = ops(environ, "up", "--demo", "--timeout", "120")
        up_s = time.perf_counter() - t0
        if up.returncode != 0:
            raise RuntimeError(f"ops up failed ({up.returncode}): "
                               f"{up.stdout[-800:]}{up.stderr[-800:]}")
        floor_s = import_seconds(ENTRYPOINTS["stream"])
        res.figures.append(Figure("ops up -> all healthy", "s", round(up_s, 2),
                                  round(floor_s, 2), "1 interpreter importing the stream role",
                                  "<= 8"))
        time.sleep(2 if quick else 10)  # let boot-time work (reconcile, backfill) finish
        fp = footprint(env, res.params["window_s"])
        bare = bare_interpreter_rss_mb()
        res.figures += [
            Figure("stack RSS (sum)", "MB", round(fp["rss_mb"]),
                   round(bare * fp["python_processes"]),
                   f"{fp['python_processes']} bare interpreters", "<= 800",
                   note=f"{fp['processes']} processes; counts shared pages once per process"),
            Figure("stack PSS (sum)", "MB", round(fp["pss_mb"]), None, "", "<= 800",
                   note="shared pages split between sharers: what the host really spends"),
            Figure("stack CPU (demo trading)", "% of a core", round(fp["cpu_pct"], 1),
                   note="sim market steps + demo strategy keep it busy: not idle"),
        ]
        res.params["footprint"] = fp
        stop = detect_sigstop(env, timeout_s=60)
        res.figures.append(Figure(
            "SIGSTOP -> restarted+healthy", "s",
            None if stop.get("healthy_s") is None else round(stop["healthy_s"], 2),
            None, "supervisord alone: never", "<= 10",
            note=f"restarted at {stop['restarted_s'] or float('nan'):.1f}s; "
                 f"supervisord said RUNNING for "
                 f"{stop['supervisord_running_s']:.1f}s of it"))
        hung = asyncio.run(detect_hung(env, timeout_s=60))
        res.figures.append(Figure(
            "hung job -> restarted", "s",
            None if hung["restarted_s"] is None else round(hung["restarted_s"], 2),
            None, "supervisord alone: never", "<= 10",
            note=f"gap bound position-manager = {PM_GAP_BOUND_S}s (config)"))
        imports = heavy_imports()
        res.params["heavy_imports"] = imports
        # Every trading role talks to the broker (the signal engine too: positions and
        # prices per account through a bound Broker); the watchdog, the simulator and
        # `ops status` have no business loading alpaca-py.
        needless = [r for r, mods in imports.items()
                    if "alpaca" in mods and r in ("watchdog", "sim", "status")]
        res.notes.append("imports alpaca-py: " + ", ".join(r for r, m in imports.items()
                                                             if "alpaca" in m))
        res.figures.append(Figure("roles importing alpaca-py needlessly", "count", len(needless),
                                  target="== 0", note=", ".join(needless) or "none"))
        res.notes.append("per-process RSS MB: " + json.dumps(fp["per_process_mb"]))
    finally:
        down = ops(environ, "down", timeout=180)
        if down.returncode != 0:
            res.notes.append(f"ops down failed: {down.stdout[-300:]}{down.stderr[-300:]}")
        shutil.rmtree(env.home, ignore_errors=True)
    return res


def main() -> None:
    bench_main("stack", run)


if __name__ == "__main__":
    main()
