"""The ingest benchmark's baseline consumer, run as its own process: the same trade stream
(`ops.broker.TradeStream`) with one INSERT, i.e. one durable commit, per event.

    python -m bench._ingest_baseline DATABASE_URL STREAM_URL KEY_ID SECRET [COUNT_FILE]

Rows go to order_events under account "baseline", beside the stream role's rows. With
COUNT_FILE it stores nothing: it counts the updates it receives and writes the count to
that file (the receive-only ceiling: WebSocket + alpaca-py + our parsing, no database).
Runs until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from ops.broker import BrokerEndpoints, TradeStream
from ops.core.models import TradeUpdate
from ops.runtime.credentials import Credentials
from ops.store.postgres import connect

INSERT = """
INSERT INTO order_events (account, event_key, order_id, client_order_id, symbol, event, ts,
                          execution_id, price, qty, position_qty, raw, cum_qty)
VALUES ('baseline', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT DO NOTHING
"""


def write_count(path: str, n: int) -> None:
    Path(path).write_text(str(n))


async def main(url: str, stream_url: str, key: str, secret: str,
               count_file: str | None = None) -> None:
    conn = await connect(url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    received = 0

    async def on_update(u: TradeUpdate) -> None:
        nonlocal received
        if count_file is not None:
            received += 1
            return
        await conn.execute(INSERT, u.event_key, u.order.id, u.order.client_order_id,
                           u.order.symbol, u.event, u.timestamp, u.execution_id, u.price,
                           u.qty, u.position_qty, dict(u.raw), u.fill_cum)

    async def on_bad(raw: object, error: str) -> None:
        print(f"bad message: {error}", file=sys.stderr)

    origin = stream_url.replace("ws://", "http://").removesuffix("/stream")
    stream = TradeStream(BrokerEndpoints(origin, stream_url, origin),
                         Credentials("bench/baseline", "large", key, secret), on_update, on_bad)
    await stream.start()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
        if count_file is not None:
            write_count(count_file, received)  # a few bytes every 50 ms
    await stream.stop()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:6]))
