"""Ingest bursts only, several in a row, with the CPU each process spent on each.

    python -m bench.burst [--rounds 3] [--fills 20000]

The real stream role (`python -m ops run stream`) against the in-process simulator and a
durable Postgres, as in bench/ingest.py, but only its burst figure, repeated: quicker
for A/B comparisons of two commits run alternately (a checkout of each, minutes apart),
and it tells the stream process's CPU from Postgres's (psutil CPU times across each
burst, all processes of the machine, grouped). Not part of `python -m bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import time

import psutil

from bench.common import durable_postgres, tmp_dir
from bench.ingest import make_events, stored_since
from bench.rig import ACCOUNT, RoleRig, bench_simulator
from ops.store.postgres import connect


def cpu_seconds() -> dict[int, tuple[str, float]]:
    out: dict[int, tuple[str, float]] = {}
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        name = " ".join(p.info["cmdline"] or [p.info["name"] or "?"])
        out[p.pid] = ("postgres" if "postgres" in name else name[:70], t.user + t.system)
    return out


async def measure(url: str, rounds: int, fills: int) -> None:
    sim = bench_simulator(fill_lot=1)
    await sim.start()
    rig = RoleRig(sim, tmp_dir("ops-bench-burst-"), url)
    conn = await connect(url)
    try:
        await rig.role("stream")
        await sim.wait_stream(ACCOUNT, within_s=90)
        await asyncio.sleep(1.0)  # let the role's on-connect completeness check finish
        for n in range(rounds):
            frames = await make_events(sim, fills)
            base_id = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM order_events"))
            before = cpu_seconds()
            t0 = time.perf_counter()
            for frame in frames:
                sim.hub.deliver(ACCOUNT, frame, faults=False)
            await stored_since(conn, ACCOUNT, base_id, len(frames), t0 + 120)
            wall = time.perf_counter() - t0
            spent: collections.Counter[str] = collections.Counter()
            for pid, (name, cpu) in cpu_seconds().items():
                spent[name] += cpu - before.get(pid, (name, 0.0))[1]
            print(f"round {n}: {len(frames) / wall:,.0f} events/s stored, {wall:.2f} s wall")
            for name, cpu in spent.most_common(3):
                print(f"    {cpu:5.2f} s CPU  {name}")
    finally:
        await conn.close()
        await rig.close()
        await sim.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.burst")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fills", type=int, default=20_000)
    args = parser.parse_args()
    with durable_postgres() as server:
        asyncio.run(measure(server.url(), args.rounds, args.fills))


if __name__ == "__main__":
    main()
