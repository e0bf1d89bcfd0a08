"""The broker adapter: the only package in the project that talks to the broker.

Public API (everything else in ops speaks ops.core.models types):
- `Broker(endpoints, creds, settings)`: async REST facade (account, clock, positions,
  orders, fills, market data) with timeouts, bounded retries and a rate budget;
  `submit_order` never re-sends and settles ambiguous outcomes by client_order_id.
- `TradeStream(endpoints, creds, on_update, on_bad_message, on_connect)`: the
  `trade_updates` WebSocket inside the process's event loop.
- `Broker.bind_account(expected_account_number)` -> AccountMismatchError on a key mix-up.

REST and market data are our own `urllib3` calls against the documented endpoints
(docs/broker-protocol.md 3), not alpaca-py's clients: those offer no public way to set a timeout,
to turn off their own retries or to close their session, and their imports load pandas
(transport.py has the details). The trade stream is our own client of the documented
WebSocket protocol (stream.py, websocket.py). Nothing in ops imports alpaca-py; tests/sim
uses it to prove the simulator speaks Alpaca's protocol to the real SDK.

Layout: transport.py (HTTP connection pool, timeouts, rate budget, error translation),
settings.py (endpoints, bounds), convert.py (raw JSON -> ops.core.models), orders.py (order
request bodies), client.py (Broker), marketdata.py, stream.py (trade_updates),
websocket.py (the WebSocket connection under it), errors.py.
"""

from ops.broker.client import (
    Broker,
    BrokerStats,
    CancelResult,
    ClosePositionResult,
    SubmitOutcome,
    SubmitResult,
)
from ops.broker.errors import (
    AccountMismatchError,
    BrokerApiError,
    BrokerDataError,
    BrokerError,
    BrokerUnavailable,
)
from ops.broker.settings import BrokerEndpoints, BrokerSettings
from ops.broker.stream import KNOWN_EVENTS, StreamCounters, TradeStream

__all__ = [
    "KNOWN_EVENTS",
    "AccountMismatchError",
    "Broker",
    "BrokerApiError",
    "BrokerDataError",
    "BrokerEndpoints",
    "BrokerError",
    "BrokerSettings",
    "BrokerStats",
    "BrokerUnavailable",
    "CancelResult",
    "ClosePositionResult",
    "StreamCounters",
    "SubmitOutcome",
    "SubmitResult",
    "TradeStream",
]
