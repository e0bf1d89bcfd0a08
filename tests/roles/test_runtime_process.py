"""`python -m ops run ...` as real subprocesses: the singleton lock across processes,
SIGUSR1 run-now, account binding refusal (exit 3) and config errors (exit 2)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from ops.store.postgres import connect
from tests.roles.conftest import RoleEnv, RoleProc
from tests.support import eventually


async def query(url: str, sql: str, *args: object) -> list[dict[str, object]]:
    conn = await connect(url)
    try:
        return [dict(r) for r in await conn.fetch(sql, *args)]
    finally:
        await conn.close()


async def heartbeat_pid(url: str, process: str) -> int | None:
    rows = await query(url, "SELECT pid FROM heartbeats WHERE process = $1", process)
    return int(str(rows[0]["pid"])) if rows else None


def connects(proc: RoleProc) -> int:
    return proc.log_text().count("connected (connect #")


@pytest.mark.system
async def test_second_instance_waits_then_takes_over_after_sigkill(role_env: RoleEnv) -> None:
    sim, url = role_env.sim, role_env.pg_url
    first = await role_env.spawn("stream", "large")
    await sim.wait_stream("large", within_s=30)

    async def first_beats() -> bool:
        return await heartbeat_pid(url, "large-stream") == first.pid
    await eventually(first_beats, "the first instance's heartbeat", timeout_s=30)

    second = await role_env.spawn("stream", "large")
    await eventually(lambda: "another instance is active; this one waits" in second.log_text(),
                     "the second instance logs that it waits", timeout_s=30)
    assert f"ops-lock large-stream pid={first.pid}" in second.log_text()  # names the holder

    # SIGUSR1 -> run now on the active instance: a manual slot in the run ledger.
    first.proc.send_signal(signal.SIGUSR1)

    async def manual_run() -> bool:
        rows = await query(url, "SELECT 1 FROM runs WHERE process = 'large-stream' "
                           "AND slot_id LIKE '%:manual' AND outcome = 'ok'")
        return bool(rows)
    await eventually(manual_run, "a manual run recorded after SIGUSR1")

    # Only one of them ever talked to the broker's stream.
    assert connects(first) == 1 and connects(second) == 0
    assert sim.hub.refused_upgrades == 0
    assert await heartbeat_pid(url, "large-stream") == first.pid  # standby never overwrote it

    first.kill()
    assert await first.proc.wait() == -signal.SIGKILL
    await eventually(lambda: "singleton lock large:stream acquired" in second.log_text(),
                     "the second instance takes the lock", timeout_s=30)
    await eventually(lambda: connects(second) == 1, "the second instance connects", 30)
    await sim.wait_stream("large", within_s=30)

    async def second_beats() -> bool:
        return await heartbeat_pid(url, "large-stream") == second.pid
    await eventually(second_beats, "the second instance heartbeats", timeout_s=30)
    assert sim.hub.refused_upgrades == 0
    assert await second.stop() == 0


async def test_account_mismatch_exits_3_with_an_incident(role_env: RoleEnv) -> None:
    sim = role_env.sim
    role_env.write_secrets(large="tiny")  # tiny's keys configured for large
    proc = await role_env.spawn("stream", "large")
    assert await asyncio.wait_for(proc.proc.wait(), 60) == 3
    rows = await query(role_env.pg_url, "SELECT kind, account, process, detail FROM incidents")
    assert len(rows) == 1
    inc = rows[0]
    assert (inc["kind"], inc["account"], inc["process"]) == ("account-mismatch", "large",
                                                              "large-stream")
    tiny = sim.account("tiny")
    assert tiny.account_number in str(inc["detail"])
    assert sim.account("large").account_number in str(inc["detail"])
    log_text = proc.log_text()
    for secret in (tiny.key_id, tiny.secret):
        assert secret not in str(inc["detail"]) and secret not in log_text
    # It never traded nor even opened the stream with the wrong keys.
    assert connects(proc) == 0 and not sim.hub.conns
    assert not sim.engine.states["tiny"].orders


async def test_bad_config_exits_2_naming_the_key(role_env: RoleEnv) -> None:
    text = role_env.config_path.read_text().replace("stream_silence_s = 120",
                                                    "stream_silence_s = -1")
    role_env.write_config_text(text)
    proc = await role_env.spawn("stream", "large")
    assert await asyncio.wait_for(proc.proc.wait(), 60) == 2
    out = proc.log_text()
    assert "broker.stream_silence_s" in out and str(role_env.config_path) in out
    role_env.write_config()  # valid again, but the account does not exist
    unknown = await role_env.spawn("stream", "nosuch")
    assert await asyncio.wait_for(unknown.proc.wait(), 60) == 2
    assert "unknown account 'nosuch'" in unknown.log_text()


async def test_missing_secrets_exit_2_with_an_incident(role_env: RoleEnv) -> None:
    role_env.secrets_path.unlink()
    proc = await role_env.spawn("stream", "large")
    assert await asyncio.wait_for(proc.proc.wait(), 60) == 2
    assert "secrets.json" in proc.log_text()
    rows = await query(role_env.pg_url, "SELECT kind, account FROM incidents")
    assert rows == [{"kind": "credentials", "account": "large"}]
    assert not role_env.sim.hub.conns
