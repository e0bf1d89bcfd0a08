"""The daemon lifecycle: real subprocesses and real signals, plus in-process failure paths."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ops.runtime.daemon import Daemon
from ops.runtime.ticker import Slot, Ticker
from tests.support import eventually, eventually_sync
from tests.ticker.ledger import MemoryLedger

SCRIPT = Path(__file__).with_name("daemon_proc.py")
ROOT = Path(__file__).resolve().parents[2]


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.endswith("}"):  # a line being written right now is skipped until complete
            out.append(json.loads(line))
    return out


def runs(path: Path) -> list[dict[str, Any]]:
    return [r for r in read_lines(path) if r["kind"] == "run"]


def final_outcomes(path: Path) -> dict[str, str]:
    """slot_id -> last outcome written."""
    out: dict[str, str] = {}
    for r in runs(path):
        out[r["slot_id"]] = r["outcome"]
    return out


def start(tmp_path: Path, mode: str, grace_s: float) -> tuple[subprocess.Popen[bytes], Path]:
    ledger = tmp_path / "ledger.jsonl"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(ledger), mode, str(grace_s)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    return proc, ledger


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, time.monotonic() - t0, err.decode()


@pytest.mark.integration
def test_sigterm_lets_the_in_flight_job_finish(tmp_path: Path) -> None:
    proc, ledger = start(tmp_path, "finish", 5.0)
    eventually_sync(lambda: any(r["outcome"] == "running" for r in runs(ledger)),
                    "a job start", timeout_s=30)
    in_flight = next(r["slot_id"] for r in runs(ledger) if r["outcome"] == "running")
    rc, elapsed, err = stop(proc)
    assert rc == 0, err
    assert elapsed < 5.0, f"took {elapsed:.2f}s, grace is 5 s"
    finals = final_outcomes(ledger)
    assert finals[in_flight] == "ok"
    assert "running" not in finals.values(), "no run may be left without a final record"
    assert "daemon proc: stopping (SIGTERM)" in err
    assert "cancelling" not in err


@pytest.mark.integration
def test_sigterm_cancels_a_hung_job_after_the_grace_period(tmp_path: Path) -> None:
    proc, ledger = start(tmp_path, "hang", 0.5)
    eventually_sync(lambda: any(r["outcome"] == "running" for r in runs(ledger)),
                    "a job start", timeout_s=30)
    in_flight = next(r for r in runs(ledger) if r["outcome"] == "running")["slot_id"]
    # The heartbeat task keeps beating while the job hangs.
    eventually_sync(lambda: sum(1 for r in read_lines(ledger) if r["kind"] == "heartbeat") >= 3,
                    "heartbeats during the hung job", timeout_s=30)
    rc, elapsed, err = stop(proc)
    assert rc == 0, err
    assert elapsed >= 0.5, "the grace period must be given to in-flight work"
    assert elapsed < 0.5 + 5.0, f"took {elapsed:.2f}s to stop"
    last = [r for r in runs(ledger) if r["slot_id"] == in_flight][-1]
    assert last["outcome"] == "error"
    assert last["error"] == "CancelledError: job cancelled (shutdown)"
    assert "grace period 0.5s over, cancelling job" in err
    assert [r["slot_id"] for r in runs(ledger)] == [in_flight, in_flight], "no run after it"


@pytest.mark.integration
def test_sigusr1_runs_now(tmp_path: Path) -> None:
    proc, ledger = start(tmp_path, "idle", 2.0)
    eventually_sync(lambda: any(r["kind"] == "heartbeat" for r in read_lines(ledger)),
                    "started", timeout_s=30)
    proc.send_signal(signal.SIGUSR1)
    eventually_sync(lambda: any(s.endswith(":manual") and o == "ok"
                                for s, o in final_outcomes(ledger).items()),
                    "manual run", timeout_s=30)
    rc, _, err = stop(proc)
    assert rc == 0, err
    assert all(s.endswith(":manual") for s in final_outcomes(ledger))


LEAKY = """
import logging, sys, threading, time
from ops.runtime.daemon import exit_despite_leaked_threads
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(message)s")
threading.Thread(target=time.sleep, args=(300,), name="leaked-sqlite").start()
raise SystemExit(exit_despite_leaked_threads("probe", 3))
"""


@pytest.mark.integration
def test_a_leaked_thread_does_not_keep_a_stopped_process_alive() -> None:
    """A non-daemon thread left running (an aiosqlite connection never closed) would make
    the interpreter wait on it forever: the process exits anyway, with its code, naming
    the thread. Without one, the code is returned and nothing is said."""
    out = subprocess.run([sys.executable, "-c", LEAKY], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 3, out
    assert ("ERROR probe: 1 thread(s) still running at exit (leaked-sqlite): exiting "
            "without waiting for them") in out.stderr, out.stderr
    clean = subprocess.run([sys.executable, "-c", LEAKY.replace(
        'threading.Thread(target=time.sleep, args=(300,), name="leaked-sqlite").start()',
        "")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (clean.returncode, clean.stderr) == (3, ""), clean


class Failing:
    name = "failing"

    async def run(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("stream broke")

    def request_stop(self) -> None:
        pass


class EndsEarly:
    name = "ends-early"

    async def run(self) -> None:
        return None

    def request_stop(self) -> None:
        pass


async def test_failing_service_stops_the_rest_with_exit_code_1() -> None:
    ledger = MemoryLedger()
    ticker = Ticker("t", 0.02, lambda s: asyncio.sleep(0), process="p", account=None,
                    role="unit", ledger=ledger)
    daemon = Daemon("p", [ticker, Failing()], grace_s=1, install_signal_handlers=False)
    rc = await asyncio.wait_for(daemon.run(), 10)
    assert rc == 1
    assert daemon.stop_reason == "service failing failed"


async def test_service_ending_on_its_own_is_a_failure() -> None:
    daemon = Daemon("p", [EndsEarly()], install_signal_handlers=False)
    assert await asyncio.wait_for(daemon.run(), 10) == 1
    assert daemon.stop_reason == "service ends-early ended"


async def test_stop_is_idempotent_and_hooks_run_in_order() -> None:
    events: list[str] = []
    entered = asyncio.Event()

    async def job(slot: Slot) -> None:
        entered.set()

    async def startup() -> None:
        events.append("startup")

    async def shutdown() -> None:
        events.append("shutdown")

    ledger = MemoryLedger()
    ticker = Ticker("t", 0.02, job, process="p", account=None, role="unit", ledger=ledger)
    daemon = Daemon("p", [ticker], grace_s=1, startup=startup, shutdown=shutdown,
                    install_signal_handlers=False)
    task = asyncio.create_task(daemon.run())
    await asyncio.wait_for(entered.wait(), 10)
    await asyncio.gather(daemon.stop(), daemon.stop())
    assert await asyncio.wait_for(task, 10) == 0
    await daemon.stop()
    assert events == ["startup", "shutdown"]
    await eventually(lambda: ledger.finals(), "the run's final record")
    assert all(r.outcome == "ok" for r in ledger.finals())


def test_bad_grace_rejected() -> None:
    with pytest.raises(ValueError, match="grace_s must be >= 0"):
        Daemon("p", grace_s=float("nan"))
