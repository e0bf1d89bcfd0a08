"""ops.core.incidents.sweep: incidents nobody else closes, closed once their condition cleared."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from ops.core.incidents import EVENT_KINDS, IncidentRecord, SweepPolicy, sweep

T = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
POLICY = SweepPolicy(quiet_s=3600, gone_quiet_s=60)


def inc(kind: str = "stream-bad-message", *, last_seen_s_ago: float = 10,
        supervised: bool | None = True, pid: int | None = 4242, host: str | None = "h1",
        closed: bool = False) -> IncidentRecord:
    return IncidentRecord(
        id="0b1c2d3e-0000-0000-0000-000000000001", kind=kind, process="large-stream",
        account="large", detail="x", opened_at=T - timedelta(hours=5),
        closed_at=T if closed else None, restarts=0, dedupe_key=f"large-stream:{kind}",
        seen_by=("large-stream",), last_seen_at=T - timedelta(seconds=last_seen_s_ago),
        opened_pid=pid, opened_host=host, supervised=supervised, acked_at=None,
        acked_by=None, closed_by=None, close_reason=None)


def test_an_event_incident_clears_once_not_seen_again_for_the_quiet_period() -> None:
    assert "stream-bad-message" in EVENT_KINDS
    assert sweep([inc(last_seen_s_ago=3599)], now=T, host="h1", alive=lambda p: True,
                 policy=POLICY) == []
    [s] = sweep([inc(last_seen_s_ago=3600)], now=T, host="h1", alive=lambda p: True,
                policy=POLICY)
    assert s.reason.startswith("not seen again for 3600s")


def test_a_state_incident_is_never_swept_while_its_supervised_raiser_lives() -> None:
    state = inc("position-drift", last_seen_s_ago=10 ** 6)
    assert sweep([state], now=T, host="h1", alive=lambda p: False, policy=POLICY) == []


def test_an_unsupervised_raiser_gone_closes_its_incident() -> None:
    hand_run = inc("credentials", supervised=False, last_seen_s_ago=120)
    assert sweep([hand_run], now=T, host="h1", alive=lambda p: True, policy=POLICY) == []
    [s] = sweep([hand_run], now=T, host="h1", alive=lambda p: False, policy=POLICY)
    assert "pid 4242, which was not under supervision and is gone" in s.reason
    # Not yet quiet long enough, another host's pid (unknowable), or already closed: kept.
    assert sweep([replace(hand_run, last_seen_at=T - timedelta(seconds=30))], now=T,
                 host="h1", alive=lambda p: False, policy=POLICY) == []
    assert sweep([hand_run], now=T, host="h2", alive=lambda p: False, policy=POLICY) == []
    assert sweep([inc("credentials", supervised=False, closed=True)], now=T, host="h1",
                 alive=lambda p: False, policy=POLICY) == []
