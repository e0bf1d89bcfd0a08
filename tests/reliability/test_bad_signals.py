"""Hostile signal rows inserted by plain SQL (bypassing `ops signal add`'s validation).

Each must end REJECTED (or EXPIRED) by the real dispatcher with a recorded reason naming
what is wrong, without an order at the broker, without the pass raising (no crash loop),
and without poisoning the good signal claimed in the same batch. Runs the in-process
`Dispatcher` for `tiny` (the `rig` fixture) against real Postgres and the real simulator.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ops.commands.control import read_kill_switch
from ops.core.models import KillSwitch
from ops.core.risk import signal_client_order_id
from ops.roles.dispatcher import Dispatcher
from tests.roles.test_dispatcher import TINY_LIMITS, Rig

# (label, column overrides, status expected, text the reason must contain)
HOSTILE: list[tuple[str, dict[str, object], str, str]] = [
    ("zero qty", {"qty": "0"}, "rejected", "qty 0 is not a positive finite number"),
    ("negative qty", {"qty": "-5"}, "rejected", "qty -5 is not a positive finite number"),
    ("NaN qty", {"qty": "NaN"}, "rejected", "qty NaN is not a positive finite number"),
    ("infinite qty", {"qty": "Infinity"}, "rejected", "not a positive finite number"),
    ("huge qty", {"qty": "1e40"}, "rejected", "exceeds max_qty"),
    ("NaN notional", {"qty": None, "notional": "NaN"}, "rejected",
     "notional NaN is not a positive finite number"),
    ("NaN limit price", {"order_type": "limit", "limit_price": "NaN"}, "rejected",
     "limit_price NaN is not a positive finite number"),
    ("limit without price", {"order_type": "limit"}, "rejected", "limit_price"),
    ("unknown order type", {"order_type": "iceberg"}, "rejected", "'iceberg'"),
    ("unknown time in force", {"time_in_force": "forever"}, "rejected", "'forever'"),
    # The simulator prices any 1-5 letter ticker; longer ones are unknown to it (HTTP 400
    # on the price lookup, 422 on submit), like a delisted or mistyped symbol at Alpaca.
    ("unknown symbol, market", {"symbol": "ZZZZZZZZ"}, "rejected",
     "latest trade for 'ZZZZZZZZ': latest stock trades: invalid symbol"),
    ("unknown symbol, limit", {"symbol": "QQQQQQQQ", "order_type": "limit",
                               "limit_price": "10"}, "rejected", "broker: "),
    ("option at market", {"symbol": "AAPL200117C00100000"}, "rejected",
     "none looked up for options: give them a limit price"),
    ("option, options off", {"symbol": "AAPL200117C00100000", "order_type": "limit",
                             "limit_price": "1"}, "rejected", "allow_options is false"),
    ("unicode symbol", {"symbol": "ÄPFEL💥"}, "rejected", "bad signal: symbol 'ÄPFEL💥'"),
    ("empty symbol", {"symbol": ""}, "rejected", "bad signal: symbol ''"),
    ("injection symbol", {"symbol": "NVDA'; DROP TABLE signals;--"}, "rejected",
     "bad signal: symbol"),
    ("huge symbol", {"symbol": "A" * 5000}, "rejected", "bad signal: symbol"),
    ("expired", {"expires_at": datetime.now(UTC) - timedelta(seconds=5)}, "expired",
     "expired at"),
    ("stale", {"created_at": datetime.now(UTC) - timedelta(days=3)}, "expired",
     "older than signal_ttl_s"),
    ("wrong account", {"account": "nosuch"}, "rejected", "'nosuch'"),
    ("wrong account case", {"account": "TINY"}, "rejected", "'TINY'"),
]


async def _insert(rig: Rig, **over: object) -> int:
    row: dict[str, object] = {"account": "tiny", "symbol": "NVDA", "side": "buy", "qty": "1",
                              "notional": None, "order_type": "market", "limit_price": None,
                              "time_in_force": "day", "created_at": datetime.now(UTC),
                              "expires_at": None}
    row.update(over)
    sid = await rig.store.pool.fetchval(
        """INSERT INTO signals (account, symbol, side, qty, notional, order_type, limit_price,
               time_in_force, created_at, expires_at)
           VALUES ($1, $2, $3, $4::numeric, $5::numeric, $6, $7::numeric, $8, $9, $10)
           RETURNING id""",
        row["account"], row["symbol"], row["side"], row["qty"], row["notional"],
        row["order_type"], row["limit_price"], row["time_in_force"], row["created_at"],
        row["expires_at"])
    assert isinstance(sid, int)
    return sid


def _dispatcher(rig: Rig) -> Dispatcher:
    """`tiny`'s dispatcher as build() wires it: it knows the configured account names."""
    async def ks() -> KillSwitch:
        return await read_kill_switch(rig.store, "tiny")

    return Dispatcher(store=rig.store, broker=rig.broker, account="tiny",
                      limits=lambda: TINY_LIMITS, kill_switch=ks, process="tiny-dispatcher",
                      accounts=lambda: ["large", "tiny"])


async def test_hostile_sql_signals_are_rejected_with_reasons(rig: Rig) -> None:
    rig.d = _dispatcher(rig)
    await rig.d.run_pass()  # reconcile first: rejections below are about the rows
    ids = {label: await _insert(rig, **over) for label, over, _, _ in HOSTILE}
    good = await _insert(rig)  # claimed in the same batch as the hostile rows
    for _ in range(3):  # never raises; later passes find nothing left to do
        await rig.d.run_pass()
    problems = []
    for label, _, status, text in HOSTILE:
        r = await rig.row(ids[label])
        if r.status != status or r.reason is None or text not in r.reason:
            problems.append(f"{label}: {r.status} {r.reason!r}")
        account = r.account if r.account in ("tiny", "large") else "tiny"
        if await rig.orders_for(ids[label], account) != 0:
            problems.append(f"{label}: an order reached the broker")
    assert not problems, "\n".join(problems)
    g = await rig.row(good)
    assert g.status == "submitted", (g.status, g.reason)
    assert await rig.orders_for(good) == 1
    # The NaN/huge values survive in the row: nothing was rewritten to make it pass.
    r = await rig.row(ids["NaN qty"])
    assert r.qty is not None and r.qty.is_nan()
    assert r.client_order_id == signal_client_order_id("tiny", ids["NaN qty"])
    # A valid signal for `large` is not tiny's to reject: it stays pending for large.
    theirs = await _insert(rig, account="large")
    await rig.d.run_pass()
    assert (await rig.row(theirs)).status == "pending"
