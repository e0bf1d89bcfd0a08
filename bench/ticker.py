"""Ticker benchmark: lateness (p50/p99/max) and drift of `ops.runtime.ticker.Ticker` against
APScheduler's AsyncIOScheduler interval job and a naive sleep loop (plus the asyncio timer
floor: a bare loop sleeping to absolute deadlines), with a CPU-busy neighbour process.
The four contenders run at the same time, each in its own process
(bench/_ticker_worker.py), so they share the same noise. Targets: p99 <= 2 ms, drift
< 1 ms per 10k ticks.
"""

from __future__ import annotations

import json
import subprocess
import sys

from bench.common import BenchResult, Figure, bench_main, busy_neighbour, percentile

CONTENDERS = ("ticker", "apscheduler", "sleep", "floor")


def drift_per_10k(ms: list[float]) -> float:
    """How far the schedule walks per 10k ticks: median lateness of the last tenth of the
    ticks minus that of the first tenth, per tick apart. Medians, so a few late ticks under
    load (which the percentiles report) do not read as drift. Magnitude: walking early is
    as wrong as walking late."""
    k = max(1, len(ms) // 10)
    apart = len(ms) - k
    if apart <= 0:
        return 0.0
    return abs(percentile(ms[-k:], 50) - percentile(ms[:k], 50)) / apart * 10_000


def summarise(lateness_s: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in lateness_s]
    return {
        "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": max(ms),
        "drift_ms_per_10k": drift_per_10k(ms), "ticks": len(ms),
    }


def run(quick: bool) -> BenchResult:
    ticks, interval_s = (40, 0.02) if quick else (2000, 0.05)
    res = BenchResult("ticker", params={"ticks": ticks, "interval_s": interval_s,
                                         "busy_neighbours": 1})
    with busy_neighbour(1):
        procs = {
            kind: subprocess.Popen(
                [sys.executable, "-m", "bench._ticker_worker", kind, str(ticks), str(interval_s)],
                stdout=subprocess.PIPE, text=True)
            for kind in CONTENDERS
        }
        stats: dict[str, dict[str, float]] = {}
        for kind, proc in procs.items():
            out, _ = proc.communicate(timeout=ticks * interval_s * 3 + 60)
            if proc.returncode != 0:
                raise RuntimeError(f"ticker worker {kind} exited {proc.returncode}")
            stats[kind] = summarise(json.loads(out))
    t, ap, sl, fl = stats["ticker"], stats["apscheduler"], stats["sleep"], stats["floor"]
    for key, label, target in (("p50_ms", "lateness p50", None), ("p99_ms", "lateness p99", "<= 2"),
                               ("max_ms", "lateness max", None)):
        note = f"sleep loop {sl[key]:.3f}; asyncio floor {fl[key]:.3f}"
        res.figures.append(Figure(label, "ms", round(t[key], 3), round(ap[key], 3), "APScheduler",
                                  target, note=note))
    res.figures.append(Figure(
        "drift per 10k ticks", "ms", round(t["drift_ms_per_10k"], 3),
        round(sl["drift_ms_per_10k"], 3), "sleep loop", "< 1",
        note=f"APScheduler {ap['drift_ms_per_10k']:.3f}; all four ran concurrently"))
    res.params["contenders"] = stats
    return res


def main() -> None:
    bench_main("ticker", run)


if __name__ == "__main__":
    main()
