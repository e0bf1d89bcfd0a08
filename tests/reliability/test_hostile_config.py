"""Hostile config: each a clear `FILE: KEY.PATH: PROBLEM` error, never a crash or a leak.

Complements tests/config (which covers every ordinary mistake) with input meant to hurt:
huge and infinite numbers, unicode / control / bidi characters in account names (shown
escaped), credentials or queries in URLs (never echoed), `..` in file paths, non-loopback
metrics hosts, TOML nested deeply enough to blow the parser's recursion. Also, as a real
process: `ops run` refuses a config like that (exit 2, message on stderr).
"""

from __future__ import annotations

import asyncio

import pytest

from ops.core.config import ConfigError
from ops.runtime.config import load_config_text
from tests.config.samples import MINIMAL
from tests.roles.conftest import RoleEnv

SRC = "conf/ops.toml"


def _r(old: str, new: str) -> str:
    assert old in MINIMAL, old
    return MINIMAL.replace(old, new, 1)


CASES: list[tuple[str, str, str]] = [
    ("infinite money", _r("max_order_notional = 100", "max_order_notional = inf"),
     "accounts.solo.risk.max_order_notional: must be a finite number (got inf)"),
    ("1e400 overflows to inf", _r("max_symbol_notional = 200", "max_symbol_notional = 1e400"),
     "accounts.solo.risk.max_symbol_notional: must be a finite number (got inf)"),
    ("nan quantity", _r("max_qty = 1.5", "max_qty = nan"),
     "accounts.solo.risk.max_qty: must be a finite number (got nan)"),
    ("huge tick interval", MINIMAL + "[accounts.solo.schedule]\ndispatcher_s = 1e308\n",
     "accounts.solo.schedule.dispatcher_s: must be at most 31622400 (got 1e+308)"),
    ("huge socket timeout", MINIMAL + "[broker]\nrest_timeout_s = 1e308\n",
     "broker.rest_timeout_s: must be at most 31622400 (got 1e+308)"),
    ("huge signal ttl", _r("max_qty = 1.5", "max_qty = 1.5\nsignal_ttl_s = 1e20"),
     "accounts.solo.risk.signal_ttl_s: must be at most 31622400 (got 1e+20)"),
    ("20-digit port", MINIMAL + "[sim]\nport = 99999999999999999999\n",
     "sim.port: must be at most 65535 (got 99999999999999999999)"),
    ("unicode account name", MINIMAL.replace("accounts.solo", 'accounts."tïny"'),
     "accounts.tïny: invalid account name 'tïny': must match ^[a-z][a-z0-9_-]{0,31}$"),
    ("fullwidth lookalike", MINIMAL.replace("accounts.solo", 'accounts."ｌarge"'),
     "accounts.ｌarge: invalid account name 'ｌarge': must match ^[a-z][a-z0-9_-]{0,31}$"),
    ("bidi override", MINIMAL.replace("accounts.solo", 'accounts."solo\\u202e"'),
     "accounts.solo\\u202e: invalid account name 'solo\\u202e': must match "
     "^[a-z][a-z0-9_-]{0,31}$"),
    ("NUL in a key", MINIMAL.replace("accounts.solo", 'accounts."so\\u0000lo"'),
     "accounts.so\\x00lo: invalid account name 'so\\x00lo': must match "
     "^[a-z][a-z0-9_-]{0,31}$"),
    ("credentials in the REST URL",
     _r('rest_url = "http://127.0.0.1:8765"', 'rest_url = "http://PKLEAK:s3cretLEAK@127.0.0.1:8765"'),
     "accounts.solo.rest_url: must not contain credentials (user@host)"),
    ("credentials in the stream URL",
     _r('stream_url = "ws://127.0.0.1:8765/stream"',
        'stream_url = "ws://PKLEAK:s3cretLEAK@127.0.0.1:8765/stream"'),
     "accounts.solo.stream_url: must not contain credentials (user@host)"),
    ("key in a query string",
     _r('data_url = "http://127.0.0.1:8765"', 'data_url = "http://127.0.0.1:8765?k=s3cretLEAK"'),
     "accounts.solo.data_url: must not have a query or fragment"),
    ("traversal out of OPS_HOME",
     MINIMAL + '[credentials]\nprovider = "file"\nfile_path = "${OPS_HOME}/../../etc/shadow"\n',
     "credentials.file_path: must not contain '..' components: write the path it means"),
    ("relative traversal", MINIMAL + '[buffer]\npath = "../../tmp/buffer.db"\n',
     "buffer.path: must not contain '..' components: write the path it means"),
    ("other variable in a path", MINIMAL + '[buffer]\npath = "${HOME}/b.db"\n',
     "buffer.path: unsupported variable ${HOME}: only ${OPS_HOME} is expanded"),
    ("metrics on every interface", MINIMAL + '[metrics]\nhost = "0.0.0.0"\n',
     "metrics.host: must be a loopback address such as 127.0.0.1: metrics are never exposed "
     "beyond this host (got '0.0.0.0')"),
    ("metrics on ::", MINIMAL + '[metrics]\nhost = "::"\n',
     "metrics.host: must be a loopback address such as 127.0.0.1: metrics are never exposed "
     "beyond this host (got '::')"),
    ("metrics by hostname", MINIMAL + '[metrics]\nhost = "evil.example.com"\n',
     "metrics.host: must be a loopback address such as 127.0.0.1: metrics are never exposed "
     "beyond this host (got 'evil.example.com')"),
    ("file:// webhook", MINIMAL + '[alerts]\nwebhook_urls = ["file:///etc/passwd"]\n',
     "alerts.webhook_urls[0]: must be a URL starting with http:// or https:// (got scheme "
     "'file')"),
    ("deeply nested TOML", MINIMAL + "[sim]\nclock = " + "[" * 3000 + "]" * 3000 + "\n",
     "invalid TOML: arrays or inline tables nested too deeply"),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_config_gets_one_clear_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config_text(text, SRC)
    message = str(info.value)
    assert message == f"{SRC}: {expected}"
    assert "s3cretLEAK" not in message and "PKLEAK" not in message
    assert all(c.isprintable() for c in message), repr(message)


async def test_ops_run_refuses_a_hostile_config(role_env: RoleEnv) -> None:
    good = role_env.config_path.read_text()
    role_env.write_config_text(good.replace('file_path = "${OPS_HOME}/secrets.json"',
                                            'file_path = "${OPS_HOME}/../secrets.json"'))
    proc = await role_env.spawn("dispatcher", "tiny")
    assert await asyncio.wait_for(proc.proc.wait(), 60) == 2
    out = proc.log_text()
    assert "credentials.file_path: must not contain '..' components" in out, out
    assert str(role_env.config_path) in out, out
