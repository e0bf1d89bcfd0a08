"""Shared pieces of the benchmarks: figures, percentiles, machine load, a durable Postgres.

A benchmark module exposes `run(quick: bool) -> BenchResult` and a `main()` that prints
the result as one JSON line (so `bench.run` can call it in a subprocess: every benchmark
gets a fresh interpreter and its own memory). Each `Figure` carries its baseline measured
in the same run, so the ratio holds on a noisy machine even when absolute values do not.

What does not live here: the benchmarks themselves, and the runner (bench/run.py).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Figure:
    """One measured figure, its same-run baseline and its target.

    `target` is a comparison such as "<= 2" or ">= 20000" (None: no target, informative);
    `meets` is computed from it. `baseline_name` says what the baseline is.
    """

    metric: str
    unit: str
    value: float | None
    baseline: float | None = None
    baseline_name: str = ""
    target: str | None = None
    meets: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.meets is None and self.target is not None and self.value is not None:
            self.meets = check_target(self.value, self.target)


@dataclass
class BenchResult:
    """What one benchmark returns: its figures and the parameters it ran with."""

    bench: str
    figures: list[Figure] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def check_target(value: float, target: str) -> bool:
    """`check_target(1.5, "<= 2")` -> True. Operators: <=, <, >=, >, ==."""
    op, _, limit_text = target.strip().partition(" ")
    limit = float(limit_text)
    ops: dict[str, Callable[[float, float], bool]] = {
        "<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b,
        ">": lambda a, b: a > b, "==": lambda a, b: a == b,
    }
    if op not in ops:
        raise ValueError(f"target {target!r}: operator must be one of {', '.join(ops)}")
    return ops[op](value, limit)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(p / 100 * len(ordered))))
    return ordered[rank - 1]


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem_kb / 1e6, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "load_average": list(load_average()),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def busy_neighbour(count: int = 1) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` processes spinning a CPU each (the "CPU-busy neighbour"), killed after."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextmanager
def durable_postgres() -> Iterator[Any]:
    """A migrated embedded Postgres of the benchmark's own with DEFAULT durability
    (fsync on, synchronous_commit on): the figures are about durably stored rows.
    Lives under /tmp (postgres may run as user `pgserver`, which must traverse parents)."""
    import asyncio

    from ops.store.embedded import EmbeddedPostgres
    from ops.store.migrate import migrate

    root = Path(tempfile.mkdtemp(prefix="ops-bench-", dir="/tmp"))
    os.chmod(root, 0o755)
    server = EmbeddedPostgres(root / "pg", options=("-c", "max_connections=100"))
    try:
        server.start()
        asyncio.run(migrate(server.url()))
        yield server
    finally:
        try:
            server.stop(mode="immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


def tmp_dir(prefix: str) -> Path:
    """A traversable /tmp directory, removed when the benchmark's interpreter exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def bench_main(name: str, run: Callable[[bool], BenchResult]) -> None:
    """Entry point of `python -m bench.<name> [--quick]`: one JSON line on stdout."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    args = parser.parse_args()
    t0 = time.monotonic()
    before = load_average()
    result = run(args.quick)
    result.seconds = round(time.monotonic() - t0, 2)
    result.load_before = result.load_before or before
    result.load_after = load_average()
    sys.stdout.write(json.dumps(result.to_json()) + "\n")
    sys.stdout.flush()
