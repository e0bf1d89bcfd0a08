"""The chaos rig: the real demo stack (`ops up --demo`) plus the tools to hurt it and to
count what happened.

`ChaosRig` wraps tests/e2e's `Stack` (one tmp OPS_HOME, embedded Postgres, simulator and
every role under a real supervisord; `ops down` always runs after). It adds:
- `roles()`: the supervised role processes (stream, dispatcher, position-manager per
  account, signal-engine), `proc(name)`, `kill(name, sig)`;
- `fault(action, **kw)`: the simulator's loopback admin API (`POST /_sim/faults`), e.g.
  drop_streams, mute/unmute, fail_next, set_clock;
- `truth()`: the invariants COUNTED against the simulator's own ledger (`GET /_sim/state`),
  never assumed:
  - fills by identity (order id, cumulative quantity after the execution): the broker's
    FILL activities vs the fill rows of `order_events`: lost (at the broker, not stored),
    duplicated (stored copies beyond the first), phantom (stored, unknown to the broker);
  - broker orders per signal client_order_id (`ops-<account>-sig-<id>`): the maximum and
    how many signals have more than one; Postgres must record each such signal as sent
    with that order (never 'rejected'/'expired'/'pending' while the broker has it);
  - positions: per account and symbol (every symbol either side ever filled, flat ones
    too), the signed sum of the STORED fills' execution quantities (side from the stored
    order, else the stored event) against the simulator's positions. Not the `positions`
    table: that is a copy of the broker's /v2/positions made by the position manager,
    equal by construction; positions derived from the stored fills are equal only if
    every fill is stored once;
  - no account stays drift-blocked (its position manager agrees with the broker again);
- `settle(timeout_s)`: closes the simulated market (no new fills) and polls `truth()` until
  every invariant holds OR the deadline passes, and returns the counted `Truth` either
  way (the deadline defaults to the longest `schedule.fill_check_s` + SETTLE_MARGIN_S: a
  fill the stream missed is recovered by the periodic completeness check at the latest);
  the scenario reports the counts and then asserts them (`assert_held`); `reopen()` opens
  the market again;
- `stream_chaos(...)`: random duplicate / reordered trade-update delivery for a `with`
  block, every fault cleared after;
- `report(scenario, did, counted)`: one figure line, printed and appended (JSON) to the
  file named by $OPS_CHAOS_REPORT when set (docs/reliability.md is written from it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import tomllib
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ops.core.config import Schedule
from ops.runtime.demo import keys_by_account
from ops.supervise.supervisor import ProcessInfo, SupervisorClient
from tests.e2e.conftest import Stack
from tests.support import eventually_sync

ROLE_SUFFIXES = ("-stream", "-dispatcher", "-position-manager")
SIG_CID = re.compile(r"^ops-([A-Za-z0-9_.-]+)-sig-(\d+)$")
# settle(): beyond the longest periodic completeness check, time for its REST calls and
# for the position managers (every few seconds) to agree with the broker again.
SETTLE_MARGIN_S = 60.0

# Every fill row the database holds, with the side of its order as stored.
_DB_FILLS_SQL = """
SELECT e.account, e.order_id, e.symbol, e.qty, e.cum_qty,
       coalesce(o.side, e.raw -> 'data' -> 'order' ->> 'side',
                e.raw -> 'activity' ->> 'side') AS side
FROM order_events e
LEFT JOIN orders o ON o.id = e.order_id AND o.account = e.account
WHERE e.event IN ('fill', 'partial_fill')
"""


@dataclass
class Truth:
    """What `truth()` counted; `problems` empty means every invariant held."""

    fills_sim: int = 0
    fills_db: int = 0
    lost: int = 0  # fills the broker made that are not stored
    duplicated: int = 0  # stored copies beyond the first of one fill
    phantom: int = 0  # stored fills the broker never made
    orders: int = 0
    signal_orders: int = 0  # signal client_order_ids the broker has orders for
    signals: int = 0
    max_orders_per_signal: int = 0  # broker orders of the signal that has most
    doubled_signals: int = 0  # signals with more than one broker order
    positions_compared: int = 0  # (account, symbol) ever filled or held, flat ones too
    positions_held: int = 0  # of those, open at the broker
    positions_unequal: int = 0  # of those, derived-from-stored-fills != broker
    problems: list[str] = field(default_factory=list)
    settle_s: float = 0.0  # how long settle() polled until this count

    @property
    def held(self) -> bool:
        return not self.problems

    @property
    def positions_equal(self) -> bool:
        return self.positions_unequal == 0

    def counted(self) -> dict[str, Any]:
        """The counted figures every scenario reports (never a literal)."""
        out: dict[str, Any] = {
            "fills": self.fills_sim, "fills stored": self.fills_db,
            "fills lost": self.lost, "fills duplicated": self.duplicated,
            "fills phantom": self.phantom, "signals": self.signals,
            "signal orders": self.signal_orders,
            "max broker orders per signal": self.max_orders_per_signal,
            "signals with >1 broker order": self.doubled_signals,
            "positions compared": self.positions_compared,
            "positions open at the broker": self.positions_held,
            "positions unequal": self.positions_unequal,
            "positions equal": self.positions_equal,
            "invariants held": self.held, "settle s": round(self.settle_s, 1),
        }
        if self.problems:
            out["problems"] = self.problems[:10]
        return out


def assert_held(t: Truth) -> None:
    """The invariants, asserted on what was counted (report first, then call this)."""
    why = "\n".join(t.problems[:30])
    assert (t.lost, t.duplicated, t.phantom) == (0, 0, 0), why
    assert t.max_orders_per_signal <= 1, why
    assert t.positions_equal, why
    assert t.held, why


def _sign(side: Any) -> int | None:
    return {"buy": 1, "sell": -1}.get(str(side).lower())


class ChaosRig:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.env = stack.env
        self.sup = SupervisorClient.for_env(stack.env, timeout_s=10)
        self.base = f"http://127.0.0.1:{stack.sim_port}"
        # Read raw, not validated: only this value matters here, and the stack validated
        # the file itself (this process may run older code than the stack it started).
        config = tomllib.loads(stack.env.config_path.read_text())
        default = Schedule().fill_check_s
        self.fill_check_s = max((float(a.get("schedule", {}).get("fill_check_s", default))
                                 for a in config.get("accounts", {}).values()),
                                default=default)

    # -- processes ------------------------------------------------------------------------

    def roles(self) -> list[ProcessInfo]:
        return [p for p in self.sup.processes()
                if p.name == "signal-engine" or p.name.endswith(ROLE_SUFFIXES)]

    def proc(self, name: str) -> ProcessInfo:
        return next(p for p in self.sup.processes() if p.name == name)

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> int:
        p = self.proc(name)
        assert p.pid, f"{name} has no pid ({p.state})"
        os.kill(p.pid, sig)
        return p.pid

    def all_running(self) -> bool:
        return all(p.state == "RUNNING" for p in self.sup.processes())

    def wait_all_running(self, timeout_s: float = 60) -> None:
        self.stack.poll("every supervised process RUNNING", self.all_running, timeout_s)

    # -- simulator ------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        req = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def fault(self, action: str, **kw: Any) -> Any:
        return self._post("/_sim/faults", {"action": action, **kw})["result"]

    def sim_state(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + "/_sim/state", timeout=10) as resp:
            state: dict[str, Any] = json.loads(resp.read())
        return state

    def sim_fills(self) -> int:
        """How many fills (FILL activities) the simulator has made so far."""
        return sum(1 for acct in self.sim_state()["accounts"].values()
                   for a in acct["activities"] if a.get("activity_type") == "FILL")

    def place_orders(self, n: int, prefix: str = "chaos",
                     only: str | None = None) -> None:
        """Buy orders of 1 AAPL sent straight to the broker (as from Alpaca's web UI),
        alternating between the accounts (or to account `only`): fills the pipeline did not
        ask for, whose events the stream must store whatever happens to Postgres."""
        keys = keys_by_account(self.stack.env.home / "secrets.json")  # the home's demo keys
        accounts = [{"name": name, "key_id": key, "secret": secret}
                    for name, (key, secret) in sorted(keys.items())
                    if only is None or name == only]
        assert accounts, f"no simulator account {only!r}"
        for i in range(n):
            acct = accounts[i % len(accounts)]
            body = {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                    "time_in_force": "day", "client_order_id": f"{prefix}-{time.time_ns()}"}
            req = urllib.request.Request(
                self.base + "/v2/orders", data=json.dumps(body).encode(), method="POST",
                headers={"Content-Type": "application/json", "APCA-API-KEY-ID": acct["key_id"],
                         "APCA-API-SECRET-KEY": acct["secret"]})
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200, resp.status

    @contextmanager
    def stream_chaos(self, duplicate: float, reorder: float,
                     seed: int | None = None) -> Iterator[int]:
        """Random duplicate / reordered trade-update delivery on every account for the
        block (yields the RNG seed); every simulator fault is cleared after, whatever
        happened (the clock is not a fault: `settle`/`reopen` own it)."""
        used = int(self.fault("set_stream_chaos", duplicate=duplicate, reorder=reorder,
                              seed=seed))
        try:
            yield used
        finally:
            self.fault("clear")

    # -- invariants -----------------------------------------------------------------------

    def truth(self) -> Truth:
        t = Truth()
        state = self.sim_state()
        # A fill's identity: (order id, cum qty after it), from the simulator's ledger
        # (ground truth); never from an id's shape (activity and execution ids are
        # unrelated, as on Alpaca).
        sim_fills: set[tuple[str, Decimal]] = set()
        cids: Counter[str] = Counter()
        orders: dict[str, str] = {}  # cid -> broker order id
        # (account number, symbol) -> the broker's position: every symbol it ever filled
        # (0 when flat: a flat symbol is compared too) and every position it holds.
        sim_pos: dict[tuple[str, str], Decimal] = {}
        for acct in state["accounts"].values():
            for a in acct["activities"]:
                if a.get("activity_type") == "FILL":
                    sim_fills.add((str(a["order_id"]), Decimal(str(a["cum_qty"]))))
                    sim_pos[(str(acct["account_number"]), str(a["symbol"]))] = Decimal(0)
            for o in acct["orders"]:
                t.orders += 1
                cids[o["client_order_id"]] += 1
                orders[o["client_order_id"]] = o["id"]
            for p in acct["positions"]:
                sim_pos[(str(acct["account_number"]), str(p["symbol"]))] = \
                    Decimal(str(p["qty"]))
        rows = self.stack.query(_DB_FILLS_SQL)
        db_fills = Counter((str(r["order_id"]), r["cum_qty"]) for r in rows)
        t.fills_sim, t.fills_db = len(sim_fills), sum(db_fills.values())
        missing = sorted(sim_fills - set(db_fills))
        extra = sorted(set(db_fills) - sim_fills, key=str)
        twice = sorted(e for e, n in db_fills.items() if n > 1)
        t.lost, t.phantom = len(missing), len(extra)
        t.duplicated = sum(n - 1 for n in db_fills.values() if n > 1)
        if missing or extra or twice:
            t.problems.append(f"fills: {len(missing)} missing {missing[:5]}, {len(extra)} "
                              f"unknown to the broker {extra[:5]}, {len(twice)} stored "
                              f"twice {twice[:5]}")
        self._positions(t, rows, sim_pos)
        signals = {(str(r["account"]), int(r["id"])): r for r in self.stack.query(
            "SELECT id, account, status, broker_order_id FROM signals")}
        t.signals = len(signals)
        for cid, n in cids.items():
            m = SIG_CID.match(cid)
            if not m:
                continue
            t.signal_orders += 1
            t.max_orders_per_signal = max(t.max_orders_per_signal, n)
            if n > 1:
                t.doubled_signals += 1
                t.problems.append(f"{cid}: {n} broker orders for one signal")
            row = signals.get((m.group(1), int(m.group(2))))
            if row is None:
                t.problems.append(f"{cid}: broker order for a signal Postgres lacks")
            elif row["status"] in ("pending", "claimed", "unknown", "rejected", "expired"):
                t.problems.append(f"{cid}: at the broker, but the signal is {row['status']}")
            elif row["broker_order_id"] != orders[cid]:
                t.problems.append(f"{cid}: signal records order {row['broker_order_id']}, "
                                  f"broker has {orders[cid]}")
        # Every fill stored and the market closed: the position managers must agree with
        # the broker again, so a drift block raised while events were late must be lifted.
        for r in self.stack.query(
                "SELECT account, value FROM controls WHERE key = 'drift_block'"):
            value = r["value"]
            value = json.loads(value) if isinstance(value, str) else value
            if isinstance(value, dict) and value.get("blocked"):
                t.problems.append(f"{r['account']}: drift block still on: {value.get('reason')}")
        return t

    def _positions(self, t: Truth, rows: list[Any],
                   sim_pos: dict[tuple[str, str], Decimal]) -> None:
        """Positions derived from the stored fills vs the broker's, per account + symbol."""
        numbers = {str(r["name"]): str(r["account_number"]) for r in self.stack.query(
            "SELECT name, account_number FROM accounts")}
        derived: defaultdict[tuple[str, str], Decimal] = defaultdict(Decimal)
        for r in rows:
            sign = _sign(r["side"])
            if sign is None or r["qty"] is None:
                t.problems.append(f"fill {r['order_id']} at {r['cum_qty']}: stored without "
                                  f"a side ({r['side']}) or a quantity ({r['qty']})")
                continue
            account = numbers.get(str(r["account"]), str(r["account"]))
            derived[(account, str(r["symbol"]))] += sign * r["qty"]
        keys = sorted(set(derived) | set(sim_pos))
        t.positions_compared = len(keys)
        t.positions_held = sum(1 for q in sim_pos.values() if q)
        unequal = [(k, derived.get(k, Decimal(0)), sim_pos.get(k, Decimal(0))) for k in keys
                   if derived.get(k, Decimal(0)) != sim_pos.get(k, Decimal(0))]
        t.positions_unequal = len(unequal)
        if unequal:
            t.problems.append("positions (from stored fills vs broker): " + ", ".join(
                f"{a}/{s} {q} vs {b}" for (a, s), q, b in unequal[:8]))

    def settle(self, timeout_s: float | None = None) -> Truth:
        """Close the market (nothing new fills) and poll `truth()` until every invariant
        holds or the deadline passes; the counted `Truth` either way (assert after
        reporting it)."""
        limit = self.fill_check_s + SETTLE_MARGIN_S if timeout_s is None else timeout_s
        self.fault("set_clock", mode="closed")
        t0 = time.monotonic()
        last = Truth()

        def holds() -> bool:
            nonlocal last
            last = self.truth()
            last.settle_s = time.monotonic() - t0
            return last.held

        try:
            eventually_sync(holds, "the invariants to hold", limit, 1)
        except AssertionError:
            self._keep_evidence(last)
        return last

    def _keep_evidence(self, t: Truth) -> None:
        """The simulator's ledger and what was counted, into OPS_HOME (the simulator's
        state dies with the stack; keep the home with OPS_TEST_KEEP_HOME=1)."""
        path = self.env.home / f"chaos-settle-failed-{time.time_ns()}.json"
        path.write_text(json.dumps({"truth": t.counted(), "problems": t.problems,
                                    "sim_state": self.sim_state()}, default=str))
        print(f"\nsettle: invariants did not hold within the deadline; evidence in {path}")

    def reopen(self) -> None:
        self.fault("set_clock", mode="open")

    # -- reporting ------------------------------------------------------------------------

    def report(self, scenario: str, did: str, counted: dict[str, Any]) -> None:
        line = {"scenario": scenario, "did": did, "counted": counted,
                "at": datetime.now(UTC).isoformat(timespec="seconds")}
        print(f"\nCHAOS {scenario}: {did}; " + ", ".join(f"{k}={v}" for k, v in
                                                         counted.items()))
        path = os.environ.get("OPS_CHAOS_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, default=str) + "\n")
