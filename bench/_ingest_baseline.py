"""The ingest benchmark's baseline consumer, run as its own process: the same trade stream
(`ops.broker.TradeStream`) with one INSERT, i.e. one durable commit, per event.

    python -m bench._ingest_baseline DATABASE_URL STREAM_URL KEY_ID SECRET   (until SIGTERM)

Rows go to order_events under account "baseline", beside the stream role's rows.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from ops.broker import BrokerEndpoints, TradeStream
from ops.credentials import Credentials
from ops.models import TradeUpdate
from ops.store.postgres import connect

INSERT = """
INSERT INTO order_events (account, event_key, order_id, client_order_id, symbol, event, ts,
                          execution_id, price, qty, position_qty, raw)
VALUES ('baseline', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (account, event_key) DO NOTHING
"""


async def main(url: str, stream_url: str, key: str, secret: str) -> None:
    conn = await connect(url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def on_update(u: TradeUpdate) -> None:
        await conn.execute(INSERT, u.event_key, u.order.id, u.order.client_order_id,
                           u.order.symbol, u.event, u.timestamp, u.execution_id, u.price,
                           u.qty, u.position_qty, dict(u.raw))

    async def on_bad(raw: object, error: str) -> None:
        print(f"bad message: {error}", file=sys.stderr)

    origin = stream_url.replace("ws://", "http://").removesuffix("/stream")
    stream = TradeStream(BrokerEndpoints(origin, stream_url, origin),
                         Credentials("bench/baseline", "large", key, secret), on_update, on_bad)
    await stream.start()
    await stop.wait()
    await stream.stop()
    await conn.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
