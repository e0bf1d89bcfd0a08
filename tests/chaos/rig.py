"""The chaos rig: the real demo stack (`ops up --demo`) plus the tools to hurt it and to
count what happened.

`ChaosRig` wraps tests/e2e's `Stack` (one tmp OPS_HOME, embedded Postgres, simulator and
every role under a real supervisord; `ops down` always runs after). It adds:
- `roles()`: the supervised role processes (stream, dispatcher, position-manager per
  account, signal-engine), `proc(name)`, `kill(name, sig)`;
- `fault(action, **kw)`: the simulator's loopback admin API (`POST /_sim/faults`), e.g.
  drop_streams, mute/unmute, fail_next, set_clock;
- `truth()`: the invariants counted against the simulator's own ledger (`GET /_sim/state`):
  every fill the simulator made is stored exactly once, by identity (order id,
  cumulative quantity): counted lost / duplicated / phantom; every signal has at most one
  broker order, which Postgres records as sent (never 'rejected'/'expired'/'pending'
  while the broker has it), and no account stays drift-blocked (its position manager
  agrees with the broker again);
- `settle()`: closes the simulated market (no new fills) and waits until `truth()` holds,
  so the comparison is exact; `reopen()` opens it again;
- `report(scenario, did, counted)`: one figure line, printed and appended (JSON) to the
  file named by $OPS_CHAOS_REPORT when set (docs/reliability.md is written from it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ops.supervisor import ProcessInfo, SupervisorClient
from tests.e2e.conftest import Stack

ROLE_SUFFIXES = ("-stream", "-dispatcher", "-position-manager")
SIG_CID = re.compile(r"^ops-([A-Za-z0-9_.-]+)-sig-(\d+)$")


@dataclass
class Truth:
    """What `truth()` counted; `problems` empty means every invariant held."""

    fills_sim: int = 0
    fills_db: int = 0
    lost: int = 0  # fills the broker made that are not stored
    duplicated: int = 0  # stored copies beyond the first of one fill
    phantom: int = 0  # stored fills the broker never made
    orders: int = 0
    signal_orders: int = 0
    signals: int = 0
    problems: list[str] = field(default_factory=list)


class ChaosRig:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.env = stack.env
        self.sup = SupervisorClient.for_env(stack.env, timeout_s=10)
        self.base = f"http://127.0.0.1:{stack.sim_port}"

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

    # -- invariants -----------------------------------------------------------------------

    def truth(self) -> Truth:
        t = Truth()
        state = self.sim_state()
        # A fill's identity: (order id, cumulative qty after it), from the simulator's
        # ledger (ground truth); never from an id's shape (activity and execution ids are
        # unrelated, as on Alpaca).
        sim_fills: set[tuple[str, Decimal]] = set()
        cids: Counter[str] = Counter()
        orders: dict[str, str] = {}  # cid -> broker order id
        for acct in state["accounts"].values():
            for a in acct["activities"]:
                if a.get("activity_type") == "FILL":
                    sim_fills.add((str(a["order_id"]), Decimal(str(a["cum_qty"]))))
            for o in acct["orders"]:
                t.orders += 1
                cids[o["client_order_id"]] += 1
                orders[o["client_order_id"]] = o["id"]
        db_fills = Counter((str(r["order_id"]), r["cum_qty"]) for r in self.stack.query(
            "SELECT order_id, cum_qty FROM order_events WHERE event IN ('fill', 'partial_fill')"))
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
        signals = {(str(r["account"]), int(r["id"])): r for r in self.stack.query(
            "SELECT id, account, status, broker_order_id FROM signals")}
        t.signals = len(signals)
        for cid, n in cids.items():
            m = SIG_CID.match(cid)
            if not m:
                continue
            t.signal_orders += 1
            if n > 1:
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

    def settle(self, timeout_s: float = 90) -> Truth:
        """Close the market (nothing new fills) and wait until every invariant holds."""
        self.fault("set_clock", mode="closed")
        deadline = time.monotonic() + timeout_s
        while True:
            t = self.truth()
            if not t.problems:
                return t
            if time.monotonic() > deadline:
                raise AssertionError("invariants did not hold within "
                                     f"{timeout_s:g}s:\n" + "\n".join(t.problems[:30]))
            time.sleep(1)

    def reopen(self) -> None:
        self.fault("set_clock", mode="open")

    # -- reporting ------------------------------------------------------------------------

    def report(self, scenario: str, did: str, counted: dict[str, Any]) -> None:
        line = {"scenario": scenario, "did": did, "counted": counted}
        print(f"\nCHAOS {scenario}: {did}; " + ", ".join(f"{k}={v}" for k, v in
                                                         counted.items()))
        path = os.environ.get("OPS_CHAOS_REPORT")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
