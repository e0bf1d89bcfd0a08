"""Chaos: the trade stream loses, repeats and reorders events while the demo stack trades
(issue 12, item 5). One demo stack for the module (tests/chaos/conftest.py); scenarios
in order, each with random stream chaos ON for its whole length (every trade update
duplicated with probability 0.2 and held back past the next one with probability 0.2),
cleared after:

1. mute: the stream stays connected and answers pings but delivers no trade update for
   $OPS_CHAOS_MUTE_S; what it held is dropped (as Alpaca after a stall). The simulator
   drops no connection, so the fills come back only through the completeness check:
   periodic (`schedule.fill_check_s`), or requested by the position manager when the
   positions differ (a reconnect the stream role forces itself is counted and reported);
2. long mute: the same for $OPS_CHAOS_LONG_MUTE_S;
3. drop every: every stream connection closed (1011) every $OPS_CHAOS_DROP_EVERY_S for
   $OPS_CHAOS_DROP_FOR_S;
4. stream role down: every account's stream process stopped (supervisorctl stop) for
   $OPS_CHAOS_STREAM_DOWN_S while the dispatchers keep trading, then started;
5. refused authentication: the stream answers "unauthorized" to valid keys (REST still
   accepts them) for $OPS_CHAOS_REFUSE_S; the connections are dropped at its start so
   the roles must reconnect into the refusal.
In 4 and 5 no completeness check can run, so the position managers soon block new
entries (drift they cannot blame on the broker) and the pipeline's own trading stops: one
order straight to the broker every TRICKLE_S (account large, 1 AAPL) keeps fills
happening for the whole outage.

Each scenario asserts that the simulator made fills during its fault window (counted
before and after), then `settle()` closes the market and COUNTS lost / duplicated /
phantom fills, broker orders per signal and positions (derived from the stored fills vs
the broker's) against the simulator's ledger; the line is reported ($OPS_CHAOS_REPORT)
and then asserted.

Knobs (seconds; the defaults are sized for CI, the issue's full run in []). A mute costs
its length plus up to `fill_check_s` (60 s in conf/ops.toml) in `settle()`: the fills
dropped at its end wait for the next periodic check. At the defaults this module takes
about 5 min on 2 cores:
  OPS_CHAOS_MUTE_S         30   [30]
  OPS_CHAOS_LONG_MUTE_S    45   [300]
  OPS_CHAOS_DROP_EVERY_S    5   [5]
  OPS_CHAOS_DROP_FOR_S     20   [120]
  OPS_CHAOS_STREAM_DOWN_S  45   [600]  (from the stop request to the start)
  OPS_CHAOS_REFUSE_S       15   [120]
  OPS_CHAOS_SEED            7   (stream chaos RNG)

The full run (docs/reliability.md):
  OPS_CHAOS_LONG_MUTE_S=300 OPS_CHAOS_DROP_FOR_S=120 OPS_CHAOS_STREAM_DOWN_S=600 \
  OPS_CHAOS_REFUSE_S=120 OPS_CHAOS_REPORT=/tmp/chaos-full.jsonl \
  .venv/bin/pytest tests/chaos -s -p no:randomly
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.chaos.rig import ChaosRig, Truth, assert_held

MUTE_S = float(os.environ.get("OPS_CHAOS_MUTE_S", "30"))
LONG_MUTE_S = float(os.environ.get("OPS_CHAOS_LONG_MUTE_S", "45"))
DROP_EVERY_S = float(os.environ.get("OPS_CHAOS_DROP_EVERY_S", "5"))
DROP_FOR_S = float(os.environ.get("OPS_CHAOS_DROP_FOR_S", "20"))
STREAM_DOWN_S = float(os.environ.get("OPS_CHAOS_STREAM_DOWN_S", "45"))
REFUSE_S = float(os.environ.get("OPS_CHAOS_REFUSE_S", "15"))
SEED = int(os.environ.get("OPS_CHAOS_SEED", "7"))
DUPLICATE = REORDER = 0.2
TRICKLE_S = 10.0  # stream outages: one order straight to the broker this often
CHAOS = f"duplicates {DUPLICATE:g} + reorder {REORDER:g}"

# Per test: its fault window plus the stack's start, the settle deadline and slack.
_LONGEST = max(MUTE_S, LONG_MUTE_S, DROP_FOR_S, STREAM_DOWN_S, REFUSE_S)
pytestmark = pytest.mark.timeout(int(_LONGEST) + 600)


@pytest.fixture(autouse=True)
def _market_open_after(rig: ChaosRig) -> Iterator[None]:
    """Whatever a scenario did, the next one starts with no fault and the market open."""
    yield
    rig.fault("clear")
    rig.reopen()


def trading(rig: ChaosRig) -> bool:
    rows = rig.stack.query("SELECT account FROM order_events WHERE event IN "
                           "('fill', 'partial_fill') GROUP BY account")
    return {r["account"] for r in rows} >= {"large", "tiny"}


def recovered(rig: ChaosRig) -> int:
    """Fills stored from the FILL activities (completeness check), not from the stream."""
    rows = rig.stack.query("SELECT count(*) AS n FROM order_events WHERE event IN "
                           "('fill', 'partial_fill') AND raw ->> 'source' = 'rest-backfill'")
    return int(rows[0]["n"])


def connects(rig: ChaosRig) -> int:
    """Stream connections the roles made (their logs: one line per (re)connect)."""
    return sum(f.read_text(errors="replace").count(") connected (connect #")
               for f in rig.env.log_dir.glob("*-stream.log"))


def stream_pids(rig: ChaosRig) -> dict[str, int]:
    return {p.name: p.pid for p in rig.roles() if p.name.endswith("-stream")}


def streams_connected(rig: ChaosRig) -> dict[str, bool]:
    return {name: bool(a["stream_connected"])
            for name, a in rig.sim_state()["accounts"].items()}


@dataclass
class Window:
    """What happened during one fault window, counted on the simulator."""

    fills_before: int
    recovered_before: int
    connects_before: int
    chaos_before: dict[str, Any]
    t0: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    fills: int = 0  # fills the simulator made during the window
    duplicated: int = 0  # trade updates the simulator sent twice (whole scenario)
    reordered: int = 0  # trade updates it held back past the next one (whole scenario)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0


@contextmanager
def scenario(rig: ChaosRig) -> Iterator[Window]:
    """Stream chaos on from before the fault to the end of `settle()`; the `with` body is
    the fault window (fills counted at its start and end)."""
    rig.wait_all_running(90)
    rig.stack.poll("fills on both accounts", lambda: trading(rig), timeout_s=120)
    rig.fault("set_stream_chaos", duplicate=DUPLICATE, reorder=REORDER, seed=SEED)
    w = Window(rig.sim_fills(), recovered(rig), connects(rig),
               rig.fault("state")["stream_chaos"])
    yield w
    w.seconds = w.elapsed()
    w.fills = rig.sim_fills() - w.fills_before


def settle(rig: ChaosRig, w: Window) -> Truth:
    """Count the invariants with the chaos still on, then record what the chaos did."""
    t = rig.settle()
    chaos = rig.fault("state")["stream_chaos"]
    w.duplicated = int(chaos["duplicated"]) - int(w.chaos_before["duplicated"])
    w.reordered = int(chaos["reordered"]) - int(w.chaos_before["reordered"])
    rig.fault("clear")
    return t


def counted(rig: ChaosRig, w: Window, t: Truth, **extra: Any) -> dict[str, Any]:
    return {"fault s": round(w.seconds, 1), "fills during the fault": w.fills,
            "trade updates duplicated": w.duplicated, "trade updates reordered": w.reordered,
            "fills recovered by the completeness check": recovered(rig) - w.recovered_before,
            "stream connects": connects(rig) - w.connects_before,
            **extra, **t.counted()}


def hold_mute(rig: ChaosRig, seconds: float) -> tuple[float, int]:
    """Mute every account's stream for `seconds` (it ends by itself, dropping what it held);
    returns (seconds muted, samples in which a stream was NOT connected)."""
    disconnected = 0

    def ended() -> bool:
        nonlocal disconnected
        state = rig.sim_state()
        disconnected += sum(1 for a in state["accounts"].values()
                            if not a["stream_connected"])
        return not state["faults"]["muted"]

    t0 = time.monotonic()
    rig.fault("mute", for_s=seconds)
    rig.stack.poll("the mute ended by itself", ended, timeout_s=seconds + 30, interval_s=1)
    return time.monotonic() - t0, disconnected


def _mute_scenario(rig: ChaosRig, name: str, seconds: float) -> None:
    with scenario(rig) as w:
        muted_s, disconnected = hold_mute(rig, seconds)
    t = settle(rig, w)
    rig.report(name, f"stream chaos ({CHAOS}); every stream muted {muted_s:.0f}s "
               "(connected, pings answered, no trade update; held events dropped at the "
               "end), no connection dropped by the simulator: recovery only by the "
               f"completeness check (periodic, every {rig.fill_check_s:g}s, or requested by "
               "the position manager)",
               counted(rig, w, t, **{"samples with a stream disconnected": disconnected}))
    assert w.fills > 0, "the simulator filled nothing during the mute"
    assert_held(t)


def test_1_mute(rig: ChaosRig) -> None:
    _mute_scenario(rig, "stream-mute", MUTE_S)


def test_2_long_mute(rig: ChaosRig) -> None:
    _mute_scenario(rig, "stream-long-mute", LONG_MUTE_S)


def test_3_drop_every(rig: ChaosRig) -> None:
    with scenario(rig) as w:
        rig.fault("drop_every", seconds=DROP_EVERY_S)
        time.sleep(DROP_FOR_S)  # the fault's duration
        rig.fault("drop_every", seconds=0)
    # Each drop reconnects; back online, the check after the reconnect finds what was lost.
    rig.wait_all_running(60)
    rig.stack.poll("every stream connected again",
                   lambda: all(streams_connected(rig).values()), timeout_s=60)
    t = settle(rig, w)
    rig.report("stream-drop-every", f"stream chaos ({CHAOS}); every stream connection "
               f"closed (1011) every {DROP_EVERY_S:g}s for {w.seconds:.0f}s",
               counted(rig, w, t))
    assert w.fills > 0, "the simulator filled nothing while the streams were dropped"
    assert_held(t)


def hold_trickling(rig: ChaosRig, w: Window, seconds: float, prefix: str) -> dict[str, int]:
    """Keep the fault until the window is `seconds` old, sending an order straight to the
    broker every TRICKLE_S; what was sent and the simulator's fills in the second half."""
    sent, mid = 0, None
    while (left := seconds - w.elapsed()) > 0:
        if mid is None and left <= seconds / 2:
            mid = rig.sim_fills()
        rig.place_orders(1, prefix=prefix, only="large")
        sent += 1
        time.sleep(min(TRICKLE_S, max(0.0, seconds - w.elapsed())))  # the fault's duration
    late = rig.sim_fills() - (mid if mid is not None else w.fills_before)
    return {"orders sent straight to the broker": sent,
            "fills in the second half of the fault": late}


def _streams(rig: ChaosRig) -> list[str]:
    return sorted(p.qualified for p in rig.sup.processes() if p.name.endswith("-stream"))


def test_4_stream_role_down(rig: ChaosRig) -> None:
    names = _streams(rig)
    assert names
    with scenario(rig) as w:
        for name in names:
            rig.sup.stop(name)
        rig.stack.poll("no stream connected", lambda: not any(
            streams_connected(rig).values()), timeout_s=30)
        trickle = hold_trickling(rig, w, STREAM_DOWN_S, "chaos-stream-down")
        for name in names:
            rig.sup.start(name)
    started = time.monotonic()
    rig.wait_all_running(60)
    rig.stack.poll("every stream connected again",
                   lambda: all(streams_connected(rig).values()), timeout_s=60)
    connect_s = time.monotonic() - started
    t = settle(rig, w)
    blocks = rig.stack.query("SELECT account, count(*) AS n FROM incidents "
                             "WHERE kind = 'position-drift' AND opened_at > now() - "
                             "make_interval(secs => $1) GROUP BY account",
                             w.seconds + t.settle_s + connect_s + 10)
    rig.report("stream-role-down", f"stream chaos ({CHAOS}); every account's stream process "
               f"stopped (supervisorctl stop {', '.join(names)}) for {w.seconds:.0f}s while "
               f"the dispatchers traded and an order went straight to the broker every "
               f"{TRICKLE_S:g}s, then started",
               counted(rig, w, t, **trickle, **{
                   "s from start to every stream connected": round(connect_s, 1),
                   "drift incidents opened": {str(r["account"]): int(r["n"]) for r in blocks}}))
    assert w.fills > 0, "the simulator filled nothing while the streams were down"
    assert_held(t)


def test_5_refused_auth(rig: ChaosRig) -> None:
    def refused() -> int:
        return int(rig.fault("state")["refused_stream_auths"])

    pids = stream_pids(rig)
    with scenario(rig) as w:
        before = refused()
        rig.fault("refuse_auth", on=True)
        rig.fault("drop_streams")
        rig.stack.poll("a reconnect refused", lambda: refused() > before, timeout_s=30)
        trickle = hold_trickling(rig, w, REFUSE_S, "chaos-refused-auth")
        n_refused = refused() - before
        rig.fault("refuse_auth", on=False)
    started = time.monotonic()
    rig.wait_all_running(60)
    rig.stack.poll("every stream connected again",
                   lambda: all(streams_connected(rig).values()), timeout_s=90)
    connect_s = time.monotonic() - started
    t = settle(rig, w)
    restarted = sorted(n for n, pid in stream_pids(rig).items() if pids.get(n) != pid)
    rig.report("stream-refused-auth", f"stream chaos ({CHAOS}); stream authentication "
               f"refused (valid keys, REST unaffected) for {w.seconds:.0f}s, connections "
               f"dropped at its start; an order straight to the broker every {TRICKLE_S:g}s",
               counted(rig, w, t, **trickle, **{
                   "authentications refused": n_refused,
                   "s from refusal off to every stream connected": round(connect_s, 1),
                   "stream processes restarted": restarted}))
    assert n_refused > 0
    assert w.fills > 0, "the simulator filled nothing while authentication was refused"
    assert_held(t)

