"""`ops positions adopt|release TIER SYMBOL [--qty N]`: the operator moves a position (or
part of it) between external and managed (ops/core/ownership.py).

Adopting makes an external lot the pipeline's: its exit rules, max-hold, close-before-
expiry and protective stops apply from the next position-manager tick. Releasing hands a
managed lot back: the pipeline will never sell it again. Each is one `position_adjustments`
row (who, when, what, the quantities before and after): the audit. Both need Postgres
(ownership is read from the truth) and the account's last position sync.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from ops.commands.control import UsageError, _account, _fail, _load, _open, _positive
from ops.core.ownership import Holding, split
from ops.runtime.env import current_user
from ops.store import StorageUnavailable, Store
from ops.store.ownership import Adjustment, managed_quantities, record_adjustment


class OwnershipError(Exception):
    """Nothing to do, or it cannot be done now (the message says why)."""


@dataclass(frozen=True, slots=True)
class Change:
    before: Holding
    after: Holding
    delta: Decimal


async def holding(store: Store, account: str, symbol: str) -> Holding:
    """The symbol's position at the account's last sync, split by owner."""
    snap = await store.positions(account)
    broker = next((p.position.qty for p in snap.rows if p.position.symbol == symbol),
                  Decimal(0))
    managed = (await store.direct(managed_quantities, account, [symbol])).get(symbol,
                                                                            Decimal(0))
    return split(symbol, broker, managed)


async def change_owner(store: Store, account: str, symbol: str, *, adopt: bool,
                       qty: Decimal | None, by: str) -> Change:
    """Adopt (external -> managed) or release (managed -> external) `qty` of the position
    (default: all of that part), recorded once as a position adjustment."""
    try:
        h = await holding(store, account, symbol)
    except StorageUnavailable as exc:
        raise OwnershipError("Postgres is unreachable: ownership is kept there; "
                             "nothing was changed") from exc
    part = h.external if adopt else h.managed
    if part == 0:
        what = "external" if adopt else "managed"
        raise OwnershipError(f"{account} holds no {what} {symbol} (position "
                             f"{_q(h.broker)}, managed {_q(h.managed)}, external "
                             f"{_q(h.external)})")
    amount = abs(part) if qty is None else min(qty, abs(part))
    delta = amount if part > 0 else -amount
    if not adopt:
        delta = -delta
    verb = "adopted" if adopt else "released"
    detail = (f"{verb} {_q(amount)} {symbol}: managed {_q(h.managed)} -> "
              f"{_q(h.managed + delta)} of a position of {_q(h.broker)}")
    await store.direct(record_adjustment, Adjustment(
        account, symbol, delta, "adopt" if adopt else "release",
        f"{'adopt' if adopt else 'release'}:{uuid.uuid4()}", detail, by, datetime.now(UTC)))
    return Change(h, split(symbol, h.broker, h.managed + delta), delta)


def _q(x: Decimal) -> str:
    return format(x.normalize(), "f") if x else "0"


def _command(args: argparse.Namespace, adopt: bool) -> int:
    command = f"positions {'adopt' if adopt else 'release'}"
    loaded = _load(command)
    if isinstance(loaded, int):
        return loaded
    env, config = loaded
    try:
        account = _account(config, args.account, "TIER")
        qty = _positive("--qty", args.qty)
    except UsageError as exc:
        return _fail(command, str(exc))
    symbol = args.symbol.strip().upper()
    if not symbol:
        return _fail(command, "SYMBOL is empty")
    by = f"cli:{current_user()}"

    async def run() -> Change:
        store = await _open(env, config)
        try:
            return await change_owner(store, account, symbol, adopt=adopt, qty=qty, by=by)
        finally:
            await store.close()

    try:
        change = asyncio.run(run())
    except OwnershipError as exc:
        print(f"ops {command}: {exc}", file=sys.stderr)
        return 1
    a = change.after
    print(f"{account} {symbol}: {'adopted' if adopt else 'released'} {_q(abs(change.delta))} "
          f"by {by}; position {_q(a.broker)}: managed {_q(a.managed)}, external "
          f"{_q(a.external)}")
    if adopt:
        print("  its exit rules apply from the position manager's next tick")
    else:
        print("  the pipeline will not sell it again (unless adopted)")
    return 0


def cli_positions_adopt(args: argparse.Namespace) -> int:
    return _command(args, adopt=True)


def cli_positions_release(args: argparse.Namespace) -> int:
    return _command(args, adopt=False)


__all__ = ["Change", "OwnershipError", "change_owner", "cli_positions_adopt",
           "cli_positions_release", "holding"]
