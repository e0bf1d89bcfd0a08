"""Incidents in real Postgres: one per (kind, subject) whichever processes report it, a
recorded end, acknowledgement, lookup by id prefix, replays that change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ops.runtime.env import RuntimeEnv
from ops.store import Store
from ops.store.incidents import AmbiguousIncident, ack_incident, find_incident, list_incidents

T = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)


async def test_one_incident_per_subject_lists_every_reporter(ops_env: RuntimeEnv) -> None:
    async with await Store.open(ops_env, process="large-stream") as a, \
            await Store.open(ops_env, process="tiny-dispatcher") as b:
        first = await a.open_incident("config-invalid", detail="bad edit", process="large-stream",
                                      dedupe_key="config-invalid:/etc/ops.toml", at=T)
        again = await b.open_incident("config-invalid", detail="bad edit (b)",
                                      process="tiny-dispatcher",
                                      dedupe_key="config-invalid:/etc/ops.toml",
                                      at=T + timedelta(seconds=3))
        assert again == first
        [rec] = await list_incidents(a.pool)
        assert rec.seen_by == ("large-stream", "tiny-dispatcher")
        assert rec.detail == "bad edit" and rec.last_seen_at == T + timedelta(seconds=3)
        assert rec.supervised is False and rec.opened_pid is not None
        # Repeated by the same process: listed once, last seen moves on.
        await a.open_incident("config-invalid", detail="again", process="large-stream",
                              dedupe_key="config-invalid:/etc/ops.toml",
                              at=T + timedelta(seconds=9))
        [rec] = await list_incidents(a.pool)
        assert rec.seen_by == ("large-stream", "tiny-dispatcher")
        assert rec.last_seen_at == T + timedelta(seconds=9)

        assert await ack_incident(a.pool, rec.id, "cli:tester", T + timedelta(seconds=10))
        assert not await ack_incident(a.pool, rec.id, "cli:tester", T)  # already acked
        await b.close_incident(dedupe_key="config-invalid:/etc/ops.toml",
                               at=T + timedelta(seconds=20),
                               reason="a valid config was loaded by tiny-dispatcher")
        assert await list_incidents(a.pool) == []
        [closed] = await list_incidents(a.pool, closed_since=T)
        assert (closed.acked_by, closed.closed_by, closed.close_reason) == (
            "cli:tester", "tiny-dispatcher", "a valid config was loaded by tiny-dispatcher")
        # A new report after it closed is a new incident.
        third = await a.open_incident("config-invalid", detail="bad again",
                                      process="large-stream",
                                      dedupe_key="config-invalid:/etc/ops.toml",
                                      at=T + timedelta(seconds=30))
        assert third != first
        found = await find_incident(a.pool, third[:8])
        assert found is not None and found.id == third and found.is_open


async def test_find_by_prefix_refuses_malformed_and_ambiguous(ops_env: RuntimeEnv) -> None:
    async with await Store.open(ops_env, process="p") as s:
        for iid in ("abcd0000-0000-4000-8000-000000000001",
                    "abcd1111-0000-4000-8000-000000000002"):
            await s.pool.execute("INSERT INTO incidents (id, kind, detail, opened_at)"
                                 " VALUES ($1::text::uuid, 'k', 'd', $2)", iid, T)
        with pytest.raises(ValueError, match="at least 4 characters"):
            await find_incident(s.pool, "ab")
        with pytest.raises(ValueError):
            await find_incident(s.pool, "abcd' OR 1=1")
        with pytest.raises(AmbiguousIncident, match="ambiguous"):
            await find_incident(s.pool, "abcd")
        rec = await find_incident(s.pool, "ABCD1")
        assert rec is not None and rec.id.startswith("abcd1111")
        assert await find_incident(s.pool, "ffffffff-ffff") is None
