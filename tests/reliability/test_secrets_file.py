"""The local secrets file as real `ops run` processes see it (docs/architecture.md, Credentials).

Too open (group/world bits), or holding a secret of the wrong shape (a number or a list
for the key, a field missing, an unparsable file, another account's name): the process
exits 2 before any broker traffic, the reason names the file and what is wrong, an
incident records it, and no secret value appears in the output or in Postgres.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest

from tests.roles.conftest import SECRET_IDS, RoleEnv
from tests.roles.test_stream import query


def _valid(role_env: RoleEnv) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for acct, sid in SECRET_IDS.items():
        spec = role_env.sim.account(acct)
        out[sid] = {"api_key": spec.key_id, "api_secret": spec.secret, "account_name": acct}
    return out


def _write(role_env: RoleEnv, content: str, mode: int = 0o600) -> None:
    path = role_env.secrets_path
    path.write_text(content)
    os.chmod(path, mode)


async def _refused(role_env: RoleEnv, expect: str) -> str:
    proc = await role_env.spawn("dispatcher", "tiny")
    assert await asyncio.wait_for(proc.proc.wait(), 60) == 2, proc.log_text()
    out = proc.log_text()
    assert expect in out, out
    for acct in ("large", "tiny"):
        spec = role_env.sim.account(acct)
        for value in (spec.key_id, spec.secret, spec.secret[:12], spec.secret[-12:]):
            assert value not in out, f"{acct} secret material in the output"
    rows = await query(role_env.pg_url, "SELECT kind, account, detail FROM incidents")
    assert [(r["kind"], r["account"]) for r in rows] == [("credentials", "tiny")], rows
    detail = str(rows[0]["detail"])
    assert not any(role_env.sim.account(a).secret in detail for a in ("large", "tiny"))
    assert not role_env.sim.hub.conns
    return out


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
async def test_too_open_secrets_file_is_refused(role_env: RoleEnv, mode: int) -> None:
    _write(role_env, json.dumps(_valid(role_env)), mode)
    out = await _refused(role_env, str(role_env.secrets_path))
    assert oct(mode)[2:] in out or "0600" in out, out


@pytest.mark.parametrize(("what", "mutate", "expect"), [
    ("secret is a number", lambda e: e.update(api_secret=12345678901234567890), "api_secret"),
    ("key is a list", lambda e: e.update(api_key=["PK", "X"]), "api_key"),
    ("missing secret", lambda e: e.pop("api_secret"), "api_secret"),
    ("another account's name", lambda e: e.update(account_name="large"), "large"),
])
async def test_wrong_shape_secret_is_refused(role_env: RoleEnv, what: str, mutate: Any,
                                             expect: str) -> None:
    data = _valid(role_env)
    mutate(data[SECRET_IDS["tiny"]])
    _write(role_env, json.dumps(data))
    await _refused(role_env, expect)


async def test_unparsable_secrets_file_is_refused_without_echo(role_env: RoleEnv) -> None:
    spec = role_env.sim.account("tiny")
    _write(role_env, '{"ops-pipeline/alpaca/tiny": {"api_key": "' + spec.key_id +
           '", "api_secret": "' + spec.secret + '"')  # truncated JSON
    await _refused(role_env, "secrets.json")
