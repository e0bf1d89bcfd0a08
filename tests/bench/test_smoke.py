"""The benchmark harness cannot rot: `python -m bench --quick` runs the benchmarks with
tiny sizes against real Postgres, a real simulator and real role processes, and must print
its table and write JSON with every figure beside its baseline. No timing is asserted
(machine speed varies); only that each figure was measured and has its baseline.

Not run here (too slow for a smoke test, each exercised elsewhere): `stack` (a whole
`ops up --demo`, ~50 s; the e2e tests run the same path) and `dashboard` (bench/
dashboard.py writes 2,000 positions per load, minutes on a busy machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import Figure, check_target, percentile
from bench.run import normalise, table
from bench.stack import PM_GAP_BOUND_S, make_home

ROOT = Path(__file__).resolve().parents[2]
FAST = ("ticker", "outage", "ingest", "dispatch")
# Figures that must come with a same-run baseline.
WITH_BASELINE = {
    "ticker": {"lateness p50", "lateness p99", "lateness max", "drift per 10k ticks"},
    "outage": {"buffer write rate", "replay rate"},
    "ingest": {"burst stored", "latency p50 @1k/s", "latency p99 @1k/s"},
    "dispatch": {"signal->ack p50", "signal->ack p99"},
}


@pytest.mark.system
def test_quick_run_measures_every_figure_with_its_baseline(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", ",".join(FAST),
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["machine"]["cpus"] >= 1
    assert len(report["machine"]["load_average"]) == 3
    by_name = {r["bench"]: r for r in report["results"]}
    assert set(by_name) == set(FAST)
    for name, result in by_name.items():
        assert result["error"] is None, f"{name}: {result['error']}"
        assert result["load_before"] and result["load_after"]
        figures = {f["metric"]: f for f in result["figures"]}
        for metric in WITH_BASELINE[name]:
            assert figures[metric]["value"] is not None, (name, metric)
            assert figures[metric]["baseline"] is not None, (name, metric)
            assert figures[metric]["baseline_name"], (name, metric)
        assert name in proc.stdout  # the table names every benchmark
    outage = {f["metric"]: f["value"] for f in by_name["outage"]["figures"]}
    assert outage["lost"] == 0 and outage["duplicated"] == 0


def test_targets_and_percentiles() -> None:
    assert check_target(2.0, "<= 2") and not check_target(2.1, "<= 2")
    assert check_target(0, "== 0") and check_target(40_000, ">= 40000")
    with pytest.raises(ValueError, match="operator"):
        check_target(1, "=< 2")
    assert percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 99) == 99
    assert Figure("x", "ms", 3.0, target="<= 2").meets is False


def test_a_foreign_flat_result_is_shown_without_baselines() -> None:
    result = normalise("dashboard", {"refresh_ms": 12.5, "label": "text", "ok": True}, (1, 1, 1))
    assert [f["metric"] for f in result["figures"]] == ["refresh_ms"]
    text = table([result, {"bench": "stack", "error": "exit 1: boom", "load_before": None}])
    assert "refresh_ms" in text and "ERROR" in text and "boom" in text


def test_stack_benchmark_config_sets_the_gap_bound_it_reports() -> None:
    env, environ = make_home()
    try:
        text = env.config_path.read_text()
        assert f"position-manager = {PM_GAP_BOUND_S}" in text
        assert "8765" not in text  # a free port instead of the default
        assert environ["OPS_HOME"] == str(env.home)
    finally:
        import shutil

        shutil.rmtree(env.home, ignore_errors=True)
