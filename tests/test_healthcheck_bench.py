"""The health-check benchmark cannot rot: `python -m bench --quick --only health` measures
every figure beside its same-run baseline, and the memory target holds (RSS does not
depend on the machine's load; the wall-time target is asserted, best of 3, in
tests/test_healthcheck.py and reported by the benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.integration  # `python -m bench` runs `ops health` processes


def test_quick_health_bench_measures_wall_time_and_memory(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "health",
                           "--json", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (result,) = json.loads(out.read_text())["results"]
    assert result["bench"] == "health" and result["error"] is None, result
    figures = {f["metric"]: f for f in result["figures"]}
    for metric in ("ops health wall p50", "ops health wall max", "ops health max RSS"):
        assert figures[metric]["value"] > 0, metric
        assert figures[metric]["baseline"] > 0 and figures[metric]["baseline_name"], metric
    rss = figures["ops health max RSS"]
    assert rss["target"] == "<= 40" and rss["meets"] is True, rss
    assert figures["ops health wall max"]["target"] == "< 1000"
    assert figures["heartbeat file write p99"]["value"] > 0
    assert "ops health max RSS" in proc.stdout  # the table
