"""Stream connectivity and mute detection of the stream role (issue 13, item 2), in-process
against the real simulator and Postgres, with short configured bounds:

- refused at authenticate -> `stream.state` "refused" in the heartbeat, a `stream-refused`
  incident within the bound naming the refusal and the secret id (never key material),
  closed once the refusal is lifted;
- the broker gone for longer than the bound -> `stream-disconnected`, closed after;
- dropped every ~second -> `stream-flapping`, closed after a quiet window;
- muted while an order fills at the broker -> `stream-silent`, a forced reconnect, the
  fills recovered; closed once the stream delivers again;
- a quiet account with nothing open, muted far past the bound -> no incident at all.

Plus the pure decisions: `judge_connectivity` (what the role's connectivity watch acts
on) and `undelivered` (which order changes the REST API shows are held against the stream).
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ops.broker import Broker
from ops.broker.stream import Connectivity, StreamState
from ops.core.config import BrokerConfig
from ops.core.models import Order
from ops.roles.runtime import RoleRuntime
from ops.roles.stream import judge_connectivity, undelivered
from tests.roles.conftest import SECRET_IDS, RoleEnv, config_text, order_request, running_role
from tests.roles.test_stream import fills_match, query, ready, role_of, sim_fills
from tests.support import eventually

KEY = "large-stream:stream-connectivity"


def write_config(role_env: RoleEnv, broker: str, **kw: float) -> None:
    """The test config with extra `[broker]` keys (`broker`: TOML lines)."""
    text = config_text(role_env.sim, **kw)  # type: ignore[arg-type]
    assert text.count("\n[broker]\n") == 1
    role_env.write_config_text(text.replace("\n[broker]\n", f"\n[broker]\n{broker}\n"))


def heartbeat(rt: RoleRuntime) -> dict[str, object]:
    """The counters the heartbeat writes (what `ops status` and the dashboard read)."""
    return dict(rt.counters())


async def incidents(role_env: RoleEnv, kind: str) -> list[dict[str, object]]:
    return await query(role_env.pg_url, "SELECT kind, detail, dedupe_key, closed_at, "
                       "close_reason FROM incidents WHERE kind = $1 ORDER BY opened_at", kind)


async def stream_incidents(role_env: RoleEnv) -> list[str]:
    rows = await query(role_env.pg_url, "SELECT kind FROM incidents WHERE kind LIKE 'stream-%'")
    return sorted(str(r["kind"]) for r in rows)


async def test_refused_authentication_opens_stream_refused_and_closes_when_lifted(
    role_env: RoleEnv
) -> None:
    sim = role_env.sim
    spec = sim.account("large")
    write_config(role_env, "stream_disconnected_s = 1.0\nstream_settle_s = 0.3",
                 stream_check_s=0.2)
    sim.faults.refuse_auth("large")  # the stream refuses the key; REST accepts it
    async with running_role(role_env, "stream", "large") as rt:
        role = role_of(rt)
        await eventually(lambda: heartbeat(rt)["stream.state"] == "refused",
                         "stream.state refused in the heartbeat")
        hb = heartbeat(rt)
        assert hb["stream.refusal"] == "unauthorized: access key verification failed"
        assert hb["stream.connects"] == 0 and int(str(hb["stream.refusals"])) >= 1

        async def refused_open() -> bool:
            rows = await incidents(role_env, "stream-refused")
            return len(rows) == 1 and rows[0]["closed_at"] is None
        # Within the bound (1 s) of the role's start, give or take the boot.
        await eventually(refused_open, "stream-refused incident", timeout_s=5.0)
        detail = str((await incidents(role_env, "stream-refused"))[0]["detail"])
        assert "the broker refused large's stream authentication: check the secret " \
            f"{SECRET_IDS['large']}" in detail
        assert "access key verification failed" in detail
        assert spec.key_id not in detail and spec.secret not in detail
        assert not any(spec.key_id in str(v) or spec.secret in str(v)
                       for v in heartbeat(rt).values())
        assert (await incidents(role_env, "stream-refused"))[0]["dedupe_key"] == KEY
        assert float(str(heartbeat(rt)["stream.down_s"])) >= 1.0

        sim.faults.refuse_auth("large", on=False)
        await eventually(lambda: heartbeat(rt)["stream.state"] == "connected",
                         "connected once the refusal is lifted (alpaca-py's backoff)")

        async def closed() -> bool:
            rows = await incidents(role_env, "stream-refused")
            return len(rows) == 1 and rows[0]["closed_at"] is not None
        await eventually(closed, "stream-refused closed after the settle time")
        assert "connected again" in str((await incidents(role_env, "stream-refused"))[0][
            "close_reason"])
        hb = heartbeat(rt)
        assert hb["stream.refusal"] == "" and hb["stream.down_s"] == 0
        assert role.stream.connectivity().last_refusal is not None
        assert await stream_incidents(role_env) == ["stream-refused"]  # nothing else


async def test_broker_gone_longer_than_the_bound_opens_stream_disconnected(
    role_env: RoleEnv
) -> None:
    sim = role_env.sim
    write_config(role_env, "stream_disconnected_s = 1.0\nstream_settle_s = 0.3",
                 stream_check_s=0.2)
    async with running_role(role_env, "stream", "large") as rt:
        role = role_of(rt)
        await ready(sim, role)
        restarted = asyncio.create_task(sim.restart(down_s=3.0))

        async def opened() -> bool:
            rows = await incidents(role_env, "stream-disconnected")
            return len(rows) == 1 and rows[0]["closed_at"] is None
        await eventually(opened, "stream-disconnected incident", timeout_s=5.0)
        detail = str((await incidents(role_env, "stream-disconnected"))[0]["detail"])
        assert "large's trade stream has been disconnected for" in detail
        assert heartbeat(rt)["stream.state"] in ("disconnected", "connecting")
        assert heartbeat(rt)["stream.last_error"] != ""
        await restarted

        async def closed() -> bool:
            rows = await incidents(role_env, "stream-disconnected")
            return len(rows) == 1 and rows[0]["closed_at"] is not None
        await eventually(closed, "closed once connected again", timeout_s=30.0)
        assert heartbeat(rt)["stream.drops"] == 1
        assert "stream-refused" not in await stream_incidents(role_env)


async def test_drops_every_second_open_stream_flapping(role_env: RoleEnv) -> None:
    sim = role_env.sim
    write_config(role_env, "stream_flap_drops = 3\nstream_flap_window_s = 5.0",
                 stream_check_s=0.2)
    async with running_role(role_env, "stream", "large") as rt:
        role = role_of(rt)
        await ready(sim, role)
        sim.faults.drop_every(0.5, "large")

        async def flapping() -> bool:
            rows = await incidents(role_env, "stream-flapping")
            return len(rows) == 1 and rows[0]["closed_at"] is None
        await eventually(flapping, "stream-flapping incident", timeout_s=15.0)
        sim.faults.drop_every(0, "large")
        detail = str((await incidents(role_env, "stream-flapping"))[0]["detail"])
        assert "large's trade stream dropped 3 times in the last 5s" in detail
        hb = heartbeat(rt)
        assert int(str(hb["stream.drops"])) >= 3 and int(str(hb["stream.drops_recent"])) >= 3
        assert hb["stream.forced_reconnects"] == 0

        async def closed() -> bool:
            rows = await incidents(role_env, "stream-flapping")
            return len(rows) == 1 and rows[0]["closed_at"] is not None
        await eventually(closed, "closed after a quiet window", timeout_s=20.0)
        assert str((await incidents(role_env, "stream-flapping"))[0]["close_reason"]) \
            == "connected, no drop for 5s"
        assert heartbeat(rt)["stream.drops_recent"] == 0
        # Each reconnect was quick: never down past the (default 30 s) bound.
        assert await stream_incidents(role_env) == ["stream-flapping"]


async def test_muted_stream_with_a_fill_at_the_broker_is_silent_reconnected_recovered(
    role_env: RoleEnv, large_broker: Broker
) -> None:
    sim = role_env.sim
    role_env.write_config(stream_check_s=0.2, fill_check_s=0.5, stream_silence_s=1.0)
    async with running_role(role_env, "stream", "large") as rt:
        role = role_of(rt)
        await ready(sim, role)
        # Changes in the first second of a connection are not held against it (CLOCK_SKEW).
        await eventually(lambda: role.stream.connectivity().state_age(time.monotonic()) > 1.1,
                         "the connection older than the clock-skew margin")
        sim.faults.mute("large", for_s=6.0)  # socket alive, pings answered, nothing sent
        res = await large_broker.submit_order(order_request("AAPL", 30))
        assert res.outcome == "accepted" and res.order is not None
        await eventually(lambda: len(sim_fills(sim)) == 1, "the execution at the broker")
        filled = time.monotonic()

        async def silent() -> bool:
            rows = await incidents(role_env, "stream-silent")
            return len(rows) == 1 and rows[0]["closed_at"] is None
        # The bound (1 s) plus a periodic check (0.5 s), with room for a slow check.
        await eventually(silent, "stream-silent incident", timeout_s=5.0)
        assert time.monotonic() - filled >= 1.0  # never before the bound
        detail = str((await incidents(role_env, "stream-silent"))[0]["detail"])
        assert res.order.id in detail and "did not deliver 1 order change(s)" in detail
        await eventually(lambda: role.stream.counters.connects == 2, "forced reconnect")
        assert heartbeat(rt)["stream.forced_reconnects"] == 1
        assert role.stats.silent_reconnects == 1
        await eventually(lambda: fills_match(role_env), "the fill recovered over REST")
        assert role.checker.stats.fills_recovered == 1

        # The mute ends; the stream delivers again and the incident is (or was) closed.
        await eventually(lambda: not sim.faults.state()["muted"], "mute over")
        updates = role.stats.updates
        assert (await large_broker.submit_order(order_request("SPY", 1))).outcome == "accepted"
        await eventually(lambda: role.stats.updates > updates, "the stream delivers again")

        async def closed() -> bool:
            rows = await incidents(role_env, "stream-silent")
            return len(rows) == 1 and rows[0]["closed_at"] is not None
        await eventually(closed, "stream-silent closed")
        assert role.stats.silent_reconnects == 1
        assert await stream_incidents(role_env) == ["stream-silent"]


async def test_quiet_account_with_nothing_open_muted_for_long_never_alarms(
    role_env: RoleEnv
) -> None:
    sim = role_env.sim
    role_env.write_config(stream_check_s=0.2, fill_check_s=0.3, stream_silence_s=0.5)
    async with running_role(role_env, "stream", "large") as rt:
        role = role_of(rt)
        await ready(sim, role)
        sim.faults.mute("large")
        checks = role.checker.stats.checks
        # Ten completeness checks (each listing the orders at the broker) spanning many
        # times the silence bound.
        await eventually(lambda: role.checker.stats.checks >= checks + 10, "ten checks")
        assert role.stats.silence_checks == 0 and role.stats.silent_reconnects == 0
        assert role.stream.counters.connects == 1
        hb = heartbeat(rt)
        assert hb["stream.state"] == "connected" and hb["stream.forced_reconnects"] == 0
        assert await stream_incidents(role_env) == []


# -- judge_connectivity: the pure verdict ------------------------------------------------

B = BrokerConfig(stream_disconnected_s=30.0, stream_settle_s=5.0, stream_flap_drops=3,
                 stream_flap_window_s=60.0)


def snap(state: StreamState, since: float, *, down_since: float | None = None,
         refusal: str | None = None, drops: tuple[float, ...] = ()) -> Connectivity:
    return Connectivity(
        state=state, since=since, down_since=down_since, error=refusal, refusal=refusal,
        refusal_kind="auth" if refusal else None, last_refusal=refusal, connects=1,
        drops=len(drops), refusals=1 if refusal else 0, failures=0, forced_reconnects=0,
        drop_times=drops, last_drop=None)


def test_down_within_the_bound_waits_for_it() -> None:
    v = judge_connectivity(snap(StreamState.DISCONNECTED, 100, down_since=100), 110, B)
    assert v.down is None and not v.settled and v.recheck_s == 20


def test_down_past_the_bound_is_disconnected_or_refused() -> None:
    v = judge_connectivity(snap(StreamState.CONNECTING, 129, down_since=100), 131, B)
    assert v.down == "stream-disconnected"
    # Refused at some attempt of this outage: the refusal is the cause, whatever the
    # attempt in progress right now.
    v = judge_connectivity(snap(StreamState.AUTHENTICATING, 130, down_since=100,
                                refusal="unauthorized"), 131, B)
    assert v.down == "stream-refused" and v.recheck_s is None


def test_connected_settles_after_the_settle_time() -> None:
    v = judge_connectivity(snap(StreamState.CONNECTED, 100), 102, B)
    assert v.down is None and not v.settled and v.recheck_s == 3
    v = judge_connectivity(snap(StreamState.CONNECTED, 100), 105, B)
    assert v.settled and v.flap_quiet and v.recheck_s is None


def test_flapping_from_drops_within_the_window_and_quiet_after_it() -> None:
    drops = (10.0, 20.0, 30.0)
    v = judge_connectivity(snap(StreamState.CONNECTED, 31, drops=drops), 40, B)
    assert v.flapping and v.recent_drops == 3 and not v.flap_quiet
    assert v.settled and v.recheck_s == 50  # when the newest drop leaves the window
    v = judge_connectivity(snap(StreamState.CONNECTED, 31, drops=drops), 75, B)
    assert not v.flapping and v.recent_drops == 2 and v.recheck_s == 15
    v = judge_connectivity(snap(StreamState.CONNECTED, 31, drops=drops), 91, B)
    assert v.recent_drops == 0 and v.flap_quiet
    v = judge_connectivity(snap(StreamState.DISCONNECTED, 95, down_since=95), 96, B)
    assert not v.flap_quiet  # quiet only counts while connected


# -- undelivered: which order changes the REST API shows are held against the stream ------

T0 = datetime(2026, 1, 5, 15, 0, tzinfo=UTC)


def order(oid: str, status: str, at_s: float, filled: int = 0) -> Order:
    return Order(id=oid, client_order_id=f"c-{oid}", symbol="AAPL", side="buy",
                 order_type="market", time_in_force="day", status=status, created_at=T0,
                 updated_at=T0 + timedelta(seconds=at_s), filled_qty=Decimal(filled))


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_undelivered_changes_within_the_window() -> None:
    lo, hi = at(10), at(100)
    streamed = {
        "delivered": (at(50), "filled", Decimal(5)),  # the stream saw this very change
        "older": (at(20), "new", Decimal(0)),  # saw the order, not its fill
        "same-state": (at(20), "filled", Decimal(5)),  # updated_at moved alone
    }
    orders = [
        order("delivered", "filled", 50, 5),
        order("older", "filled", 60, 5),
        order("same-state", "filled", 60, 5),
        order("never-seen", "canceled", 30),
        order("too-young", "filled", 101, 5),  # not yet older than the bound
        order("before-connect", "filled", 9, 5),  # changed before this connection
        order("queued", "accepted", 40),  # no event promised for accepted
        order("leg", "held", 40),
    ]
    got = undelivered(orders, streamed, lo, hi)
    assert [o.id for o in got] == ["never-seen", "older"]  # oldest change first
