"""A writer process for the outage tests: `python -m tests.store.writer --url ... --name w1`.

Writes `--count` records through the Store, one call at a time like a real role: order
events spread over `--entities` orders (record i is event number i // entities of order
`<name>-e<i % entities>`, kept in `qty` and `raw`), a heartbeat every 25 records and a run
record every 50. Then it waits (bounded) until the shared buffer is drained and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ops.runtime.env import RuntimeEnv
from ops.store import Store, StoreSettings
from tests.store.factories import T0, heartbeat, run_record, trade_update


def entity(name: str, i: int, entities: int) -> tuple[str, int]:
    return f"{name}-e{i % entities}", i // entities


async def run(args: argparse.Namespace) -> int:
    env = RuntimeEnv(Path("unused.toml"), Path(args.buffer).parent, args.url)
    store = await Store.open(
        env, process=args.name, buffer_path=Path(args.buffer),
        config=StoreSettings(drain_batch=args.drain_batch, connect_timeout_s=2.0),
    )
    try:
        for i in range(args.count):
            order_id, seq = entity(args.name, i, args.entities)
            update = trade_update(order_id, seq)
            update = dataclasses.replace(update, raw={**update.raw, "writer": args.name, "i": i})
            await store.record_trade_updates("large", [update])
            if i % 25 == 0:
                await store.heartbeat(heartbeat(args.name, datetime.now(UTC), n=i))
            if i % 50 == 0:
                await store.record_run(run_record(args.name, T0 + timedelta(seconds=i)))
            if args.pace_ms:
                await asyncio.sleep(args.pace_ms / 1000)
        print(f"{args.name} wrote {args.count}", flush=True)
        if not await store.wait_drained(within_s=args.drain_within):
            print(f"{args.name}: buffer not drained in {args.drain_within}s", file=sys.stderr)
            return 3
        return 0
    finally:
        await store.close()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--buffer", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--count", type=int, default=1500)
    p.add_argument("--entities", type=int, default=4)
    p.add_argument("--pace-ms", type=float, default=0.0)
    p.add_argument("--drain-batch", type=int, default=2000)
    p.add_argument("--drain-within", type=float, default=80.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
