"""The bundled Alpaca-compatible paper-broker simulator (REST + market data + trade_updates).

Python API::

    from ops.sim import Simulator, SimConfig, SimAccountSpec, default_accounts
    async with Simulator(SimConfig(seed=7, clock="open", market_step_s=None)) as sim:
        sim.rest_url, sim.stream_url, sim.data_url   # one loopback origin
        sim.account("large").key_id
        sim.market.step(); sim.faults.drop_streams()

Modules: clock (market hours), market (synthetic prices), accounts (specs and state),
orders (request validation), engine (order lifecycle and fills), ledger (account math),
queries (order list, FILL activities), contracts (option contracts), stream
(trade_updates WebSocket), chaos (random duplicates/reorders), faults (fault knobs),
data/rest/app (HTTP), simulator (lifecycle), wire (JSON encoding), occ (option
symbols). `ops sim` is ops/commands/sim.py. Imports nothing else of ops, and
never alpaca-py.
"""

from ops.sim.accounts import SimAccountSpec, default_accounts
from ops.sim.faults import FaultController
from ops.sim.market import Market
from ops.sim.simulator import SimConfig, Simulator

__all__ = [
    "FaultController",
    "Market",
    "SimAccountSpec",
    "SimConfig",
    "Simulator",
    "default_accounts",
]
