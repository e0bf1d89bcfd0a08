"""Fixtures: the real simulator on loopback and real alpaca-py clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from decimal import Decimal

import pytest

from ops.broker import Broker, BrokerEndpoints, BrokerSettings
from ops.core.backoff import Backoff
from ops.runtime.credentials import Credentials
from ops.sim import SimConfig, Simulator, default_accounts


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(SimConfig(seed=7, clock="open", accounts=default_accounts(seed=7),
                            market_step_s=0.25, fill_lot=Decimal(100)))
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        s.faults.clear()
        await s.stop()


def endpoints(sim: Simulator) -> BrokerEndpoints:
    return BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url)


def creds(sim: Simulator, configured_as: str, keys_of: str | None = None) -> Credentials:
    """Credentials configured for account `configured_as`, holding the keys of `keys_of`."""
    spec = sim.account(keys_of or configured_as)
    return Credentials(f"test/{configured_as}", configured_as, spec.key_id, spec.secret)


FAST = BrokerSettings(
    rest_timeout_s=1.0,
    retry=Backoff(initial_s=0.05, max_s=0.2, max_attempts=4, deadline_s=20.0),
)


def make_broker(sim: Simulator, account: str = "large",
                settings: BrokerSettings = FAST) -> Broker:
    return Broker(endpoints(sim), creds(sim, account), settings)


@pytest.fixture
def broker(sim: Simulator) -> Iterator[Broker]:
    b = make_broker(sim)
    try:
        yield b
    finally:
        b.close()

