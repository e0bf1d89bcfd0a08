"""`ops sim` as a real process: --show-accounts, serving on a port, SIGTERM, --state."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.models import Order, TradeAccount
from alpaca.trading.requests import MarketOrderRequest

from ops.sim import default_accounts
from tests.support import free_port

pytestmark = pytest.mark.integration  # `ops sim` processes


def ops(*args: str) -> list[str]:
    return [sys.executable, "-m", "ops.cli", *args]


def test_show_accounts() -> None:
    out = subprocess.run(ops("sim", "--show-accounts"), capture_output=True, text=True,
                         check=True, timeout=60)
    accounts = json.loads(out.stdout)
    assert [a["name"] for a in accounts] == ["large", "tiny"]
    assert [a["account_number"] for a in accounts] == ["PASIM0000001", "PASIM0000002"]
    assert accounts[0]["key_id"] == "PKSIMLARGE00000000001"
    assert set(accounts[0]) == {"name", "account_number", "key_id", "secret"}
    assert accounts[0]["secret"] == default_accounts(7)[0].secret
    assert accounts[0]["secret"] not in repr(default_accounts(7)[0])  # masked in repr
    other = subprocess.run(ops("sim", "--show-accounts", "--seed", "8"), capture_output=True,
                           text=True, check=True, timeout=60)
    assert json.loads(other.stdout)[0]["secret"] != accounts[0]["secret"]


def test_a_homes_accounts_are_served_with_its_own_keys(tmp_path: Path) -> None:
    """`ops sim --accounts demo.json --secrets secrets.json` (what `ops up --demo` runs):
    the home's numbers and keys; the built-in keys every install shares are refused."""
    from ops.commands.stack import write_demo_secrets
    from ops.runtime.config import load_config
    from ops.runtime.demo import keys_by_account
    from ops.runtime.env import RuntimeEnv

    conf = Path(__file__).resolve().parents[2] / "conf" / "ops.toml"
    env = RuntimeEnv(config_path=conf, home=tmp_path, database_url=None)
    secrets = write_demo_secrets(env, load_config(conf, tmp_path))
    demo = tmp_path / "demo.json"
    shown = json.loads(subprocess.run(ops("sim", "--show-accounts", "--accounts", str(demo)),
                                      capture_output=True, text=True, check=True,
                                      timeout=60).stdout)
    numbers = {a["name"]: a["account_number"] for a in shown}
    assert set(numbers) == {"large", "tiny"} and all(set(a) == {"name", "account_number"}
                                                     for a in shown)
    assert numbers == {n: a.expected_account_number
                       for n, a in load_config(conf, tmp_path).accounts.items()}
    port = free_port()
    proc = subprocess.Popen(ops("sim", "--port", str(port), "--accounts", str(demo),
                                "--secrets", str(secrets)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        for name, (key, secret) in keys_by_account(secrets).items():
            account = TradingClient(key, secret, paper=True, url_override=url).get_account()
            assert isinstance(account, TradeAccount)
            assert account.account_number == numbers[name]
        builtin = default_accounts(7)[0]
        status = _status(f"{url}/v2/account", builtin.key_id, builtin.secret)
        assert status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    missing = subprocess.run(ops("sim", "--accounts", str(demo)), capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "--accounts needs --secrets" in missing.stderr


def _status(url: str, key: str, secret: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, headers={"APCA-API-KEY-ID": key,
                                               "APCA-API-SECRET-KEY": secret})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


class Served:
    """`ops sim --port` in a subprocess; the URL comes from its one stdout line."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(ops("sim", "--port", str(self.port), *extra),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline()
        m = re.search(r"rest=(\S+) stream=(\S+) data=(\S+)", self.line)
        assert m, f"unexpected first line {self.line!r}; stderr: {self._stderr()}"
        self.rest, self.stream, self.data = m.groups()

    def _stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def client(self) -> TradingClient:
        spec = default_accounts(7)[0]
        return TradingClient(spec.key_id, spec.secret, paper=True, url_override=self.rest)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        assert self.proc.stderr is not None and self.proc.stdout is not None
        self.err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


async def test_serves_on_port_and_stops_on_sigterm() -> None:
    served = await asyncio.to_thread(Served)
    try:
        assert served.rest == f"http://127.0.0.1:{served.port}"
        assert served.stream == f"ws://127.0.0.1:{served.port}/stream"
        assert served.data == served.rest
        account = await asyncio.to_thread(served.client().get_account)
        assert isinstance(account, TradeAccount) and account.account_number == "PASIM0000001"
    finally:
        code = await asyncio.to_thread(served.terminate)
    assert code == 0
    assert served.proc.returncode == 0
    assert default_accounts(7)[0].secret not in served.err  # never log secrets
    with socket.socket() as s:  # the listener is gone (REUSEADDR only skips TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", served.port))
        s.listen()


async def test_state_file_across_process_restarts(tmp_path: Path) -> None:
    state = str(tmp_path / "state.json")
    served = await asyncio.to_thread(Served, "--state", state, "--clock", "closed")
    try:
        order = await asyncio.to_thread(served.client().submit_order, MarketOrderRequest(
            symbol="AAPL", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
            client_order_id="survives"))
        assert isinstance(order, Order) and order.status == "accepted"
    finally:
        assert await asyncio.to_thread(served.terminate) == 0
    again = await asyncio.to_thread(Served, "--state", state, "--clock", "open")
    try:
        found = await asyncio.to_thread(again.client().get_order_by_client_id, "survives")
        assert isinstance(found, Order) and found.id == order.id
    finally:
        assert await asyncio.to_thread(again.terminate) == 0


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run(ops("sim", "--port", str(port)), capture_output=True, text=True,
                             timeout=60)
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr


def test_bad_state_file_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "broken.json"
    state.write_text("[1, 2")
    out = subprocess.run(ops("sim", "--port", "0", "--state", str(state)), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert "broken.json" in out.stderr and "ops sim:" in out.stderr
