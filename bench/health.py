"""`ops health` as an orchestrator runs it: one invocation's wall time and peak memory, and
what the local heartbeat file costs the role that writes it every beat.

Each invocation is the console script (`.venv/bin/ops health stream --account large`, the
command ECS `healthCheck` and Kubernetes probes run; `python -m ops` when the script is
absent) in its own process against a fresh heartbeat file. Its peak RSS comes from
`/usr/bin/time -f %M`: a child forked from this (bigger) Python process would carry the
parent's pages in its own `ru_maxrss` (Linux keeps the pre-exec high-water mark), so
`os.wait4` alone gives only an upper bound (used, and said so, when /usr/bin/time is
absent). The baseline, interleaved with it so both share the machine's noise: a bare
interpreter (`python -c pass`) of the same venv, measured the same way.

Targets (issue 15): one invocation < 1 s and <= 40 MB RSS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from bench.common import ROOT, BenchResult, Figure, bench_main, percentile, tmp_dir
from ops.supervise.healthcheck import HealthFile, health_path, write_health_file

BEAT = HealthFile(process="large-stream", pid=1, ts=0.0, interval_s=1.0, stale_s=5.0,
                  active=True, failing=False, failing_reason=None)


def health_argv() -> list[str]:
    script = Path(sys.executable).with_name("ops")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "ops"]
    return [*prefix, "health", "stream", "--account", "large"]


TIME = Path("/usr/bin/time")


def invoke(argv: list[str], env: dict[str, str], scratch: Path) -> tuple[float, float, int, str]:
    """Run `argv` once: (wall s, its own peak RSS in MB, exit code, stdout)."""
    rss_file = scratch / "maxrss"
    timed = [str(TIME), "-f", "%M", "-o", str(rss_file), *argv] if TIME.exists() else argv
    t0 = time.perf_counter()
    proc = subprocess.Popen(timed, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    kb = int(rss_file.read_text().split()[-1]) if TIME.exists() else usage.ru_maxrss
    return wall, kb / 1024, proc.returncode, out.strip()


def file_write_us(path: Path, n: int) -> list[float]:
    """What one beat's file costs the role: `write_health_file` n times, in µs each."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        write_health_file(path, replace(BEAT, ts=time.time(), pid=i))
        out.append((time.perf_counter() - t0) * 1e6)
    return out


def run(quick: bool) -> BenchResult:
    n = 5 if quick else 40
    home = tmp_dir("ops-bench-health-")
    path = health_path(home, "large-stream")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
    env["OPS_HOME"] = str(home)
    argv, bare = health_argv(), [sys.executable, "-c", "pass"]
    walls, rss, bare_walls, bare_rss = [], [], [], []
    for _ in range(n):
        write_health_file(path, replace(BEAT, ts=time.time()))
        wall, mb, code, out = invoke(argv, env, home)
        if code != 0 or not out.startswith("ok: large-stream heartbeat"):
            raise RuntimeError(f"{' '.join(argv)} exited {code}: {out}")
        walls.append(wall * 1000)
        rss.append(mb)
        wall, mb, _, _ = invoke(bare, env, home)
        bare_walls.append(wall * 1000)
        bare_rss.append(mb)
    # The unhealthy path costs the same reading; check it answers too (stale file).
    write_health_file(path, replace(BEAT, ts=time.time() - 60))
    _, _, code, out = invoke(argv, env, home)
    if code != 1 or "stale after 5s" not in out:
        raise RuntimeError(f"a stale file: exit {code}: {out}")
    writes = file_write_us(home / "run" / "health" / "bench.json", 200 if quick else 5000)
    cmd = " ".join([Path(argv[0]).name, *argv[1:]])
    return BenchResult("health", figures=[
        Figure("ops health wall p50", "ms", round(percentile(walls, 50), 1),
               baseline=round(percentile(bare_walls, 50), 1),
               baseline_name="bare interpreter", note=f"{n} invocations of `{cmd}`"),
        Figure("ops health wall max", "ms", round(max(walls), 1),
               baseline=round(max(bare_walls), 1), baseline_name="bare interpreter",
               target="< 1000", note="every invocation, the slowest one"),
        Figure("ops health max RSS", "MB", round(max(rss), 1),
               baseline=round(max(bare_rss), 1), baseline_name="bare interpreter",
               target="<= 40",
               note=("/usr/bin/time -f %M" if TIME.exists() else
                     "os.wait4 ru_maxrss: an upper bound (includes the forking parent's "
                     "pages)")),
        Figure("heartbeat file write p99", "µs", round(percentile(writes, 99), 1),
               note=f"p50 {percentile(writes, 50):.1f} µs over {len(writes)} writes: "
                    "JSON + temp file + os.replace, in a worker thread of the role (off its "
                    "event loop); on this host's ext4 (auto_da_alloc flushes on replace)"),
    ], params={"invocations": n, "argv": argv, "quick": quick})


def main() -> None:
    bench_main("health", run)


if __name__ == "__main__":
    main()
