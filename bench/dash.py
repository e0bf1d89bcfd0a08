"""The runner's dashboard row: refresh times from bench/dashboard.py (the dashboard
owner's benchmark, run as a subprocess and its printed figures parsed), plus the idle CPU
of a real interactive `ops dash` in a pseudo-terminal against a migrated Postgres holding
the demo config's processes, measured here.

Targets: <= 30 ms per refresh (load + render), key press while polling p95 <= 30 ms
(processes and positions panels), <= 2 % CPU idle.
Baseline for the idle CPU, same run: a bare Textual app (one Static widget) in the same
pseudo-terminal, i.e. what Textual itself costs while nothing changes.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import time

import psutil  # type: ignore[import-untyped]  # no stubs installed

from bench.common import ROOT, BenchResult, Figure, bench_main, durable_postgres, tmp_dir

LINE = re.compile(r"^\s+(load|render|tick|key|pos-key)\s+\(.*?\)\s+mean\s+([\d.]+) ms\s+p95\s+"
                  r"([\d.]+) ms\s+max\s+([\d.]+) ms")
BARE_TEXTUAL = """
from textual.app import App
from textual.widgets import Static
class Bare(App[None]):
    def compose(self):
        yield Static("idle")
Bare().run()
"""


def dashboard_figures(loads: int) -> tuple[dict[str, dict[str, float]], str]:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "dashboard.py"),
                           "--loads", str(loads)], capture_output=True, text=True, cwd=ROOT,
                          timeout=1100)
    if proc.returncode != 0:
        raise RuntimeError(f"bench/dashboard.py exited {proc.returncode}: {proc.stderr[-500:]}")
    out: dict[str, dict[str, float]] = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if m:
            out[m[1]] = {"mean": float(m[2]), "p95": float(m[3]), "max": float(m[4])}
    if not {"load", "render"} <= out.keys():
        raise RuntimeError(f"bench/dashboard.py printed no load/render figures: {proc.stdout}")
    return out, proc.stdout.splitlines()[0] if proc.stdout else ""


def idle_cpu(argv: list[str], env: dict[str, str], settle_s: float, window_s: float) -> float:
    """% of one core used by `argv` (and children) running in a pty, after `settle_s`."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT,
                            start_new_session=True)
    os.close(slave)

    def drain() -> None:
        try:
            while os.read(master, 65536):
                pass
        except (BlockingIOError, OSError):
            pass

    try:
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            drain()
            time.sleep(0.05)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited {proc.returncode} before the measurement")
        p = psutil.Process(proc.pid)
        tree = [p, *p.children(recursive=True)]
        before = sum(sum(x.cpu_times()[:2]) for x in tree)
        deadline = time.monotonic() + window_s
        while time.monotonic() < deadline:
            drain()  # a terminal that is read, as a real one is
            time.sleep(0.1)
        after = sum(sum(x.cpu_times()[:2]) for x in tree)
        return 100 * (after - before) / window_s
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)


def run(quick: bool) -> BenchResult:
    # bench/dashboard.py spends minutes writing 2,000 positions per load on a busy machine.
    loads, settle_s, window_s = (2, 4.0, 3.0) if quick else (3, 8.0, 20.0)
    res = BenchResult("dashboard", params={"loads": loads, "idle_window_s": window_s})
    figs, headline = dashboard_figures(loads)
    res.notes.append(headline)
    refresh = figs["load"]["mean"] + figs["render"]["mean"]
    res.figures += [
        Figure("refresh load+render (mean)", "ms", round(refresh, 1), target="<= 30",
               note=f"load p95 {figs['load']['p95']} ms, render p95 {figs['render']['p95']} ms"),
        Figure("render on the UI path (p95)", "ms", figs["render"]["p95"]),
    ]
    for key, where in (("key", "processes"), ("pos-key", "2,000 positions")):
        if key in figs:
            res.figures.append(Figure(
                f"key press while polling, {where} (p95)", "ms", figs[key]["p95"],
                target="<= 30", note=f"key event to cursor moved; max {figs[key]['max']} ms"))
    home = tmp_dir("ops-bench-dash-")
    with durable_postgres() as server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
        env.update(OPS_HOME=str(home), OPS_CONFIG=str(ROOT / "conf" / "ops.toml"),
                   OPS_DATABASE_URL=server.url(), TERM="xterm-256color",
                   COLUMNS="160", LINES="48")
        dash = idle_cpu([sys.executable, "-m", "ops", "dash"], env, settle_s, window_s)
        bare = idle_cpu([sys.executable, "-c", BARE_TEXTUAL], env, settle_s, window_s)
    res.figures.append(Figure("ops dash idle CPU", "% of a core", round(dash, 2), round(bare, 2),
                              "bare Textual app", "<= 2",
                              note="empty database, demo config, 1 s polls, supervisord absent"))
    return res


def main() -> None:
    bench_main("dashboard", run)


if __name__ == "__main__":
    main()
