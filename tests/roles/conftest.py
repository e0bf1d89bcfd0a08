"""Shared fixtures for role tests: a real simulator, a test config, secrets, subprocesses.

Fixtures (plus those of tests/conftest.py: `pg_url`, `ops_env`, ...):
- `sim` (async): a started in-process `Simulator` on 127.0.0.1 (random port), clock
  "open", market stepping every 0.1 s, fill lot 100 (bigger orders fill in partials).
  Faults via `sim.faults.*`; cleared at teardown.
- `large_broker`: a `Broker` of the test's own for `large` on `sim` (to submit the orders
  a role under test observes); closed after.
- `role_env`: a `RoleEnv` for the test: OPS_HOME in tmp, OPS_DATABASE_URL = a fresh
  migrated database (`pg_url`), a config TOML written at `role_env.config_path` whose
  accounts `large` and `tiny` point at `sim`, credentials provider "file" with a 0600
  `$OPS_HOME/secrets.json` holding the simulator's keys. Rewrite either at will:
    role_env.write_config(stream_check_s=0.5, stream_silence_s=1.0, extra="...")
    role_env.write_secrets(large="tiny")      # large's secret holds tiny's keys
  `role_env.env` is the RuntimeEnv; `role_env.subprocess_env()` is an environ for
  `python -m ops run ...`; `await role_env.spawn("stream", "large")` starts one
  (stdout+stderr to a log file: `proc.log_text()`), `proc.kill()`/`proc.stop()` end it.

Helpers: `eventually(pred, what, timeout_s)` polls a sync/async predicate;
`async with running_role(role_env, "stream", "large") as rt:` runs a role in-process
(`RoleRuntime`, no signal handlers; `builder=` to substitute one) until it is running and
stops it after (asserting exit 0); `rt.ctx`, `rt.services`, `rt.store` are live;
`config_text(sim, **kw)` renders the TOML; `order_request(...)` a market order request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest

from ops.broker import Broker, BrokerEndpoints, BrokerSettings
from ops.core.backoff import Backoff
from ops.core.models import OrderRequest, Side
from ops.roles.runtime import EXIT_OK, RoleBuilder, RoleRuntime
from ops.runtime.credentials import Credentials, write_secrets_file
from ops.runtime.env import RuntimeEnv
from ops.sim import SimConfig, Simulator, default_accounts
from tests.support import eventually

REPO = Path(__file__).resolve().parents[2]
SECRET_IDS = {"large": "ops-pipeline/alpaca", "tiny": "ops-pipeline/alpaca/tiny"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = Simulator(SimConfig(seed=7, clock="open", accounts=default_accounts(seed=7),
                            market_step_s=0.1, fill_lot=Decimal(100)))
    await s.start(host="127.0.0.1", port=0)
    try:
        yield s
    finally:
        s.faults.clear()
        await s.stop()


@pytest.fixture
def large_broker(sim: Simulator) -> Iterator[Broker]:
    spec = sim.account("large")
    b = Broker(BrokerEndpoints(sim.rest_url, sim.stream_url, sim.data_url),
               Credentials("test/large", "large", spec.key_id, spec.secret),
               BrokerSettings(rest_timeout_s=2.0,
                              retry=Backoff(initial_s=0.05, max_s=0.2, max_attempts=4)))
    try:
        yield b
    finally:
        b.close()


#: The demo strategy for both accounts, as a config block (`extra=` of write_config).
DEMO = """
[[signal_engine.strategies]]
name = "demo"
callable = "ops.strategies.demo:generate"
accounts = ["large", "tiny"]
params = { symbols = ["AAPL", "MSFT", "SPY"] }
"""


def config_text(
    sim: Simulator,
    *,
    stream_check_s: float = 0.5,
    fill_check_s: float = 60.0,
    stream_silence_s: float = 120.0,
    dispatcher_s: float = 1.0,
    position_manager_s: float = 1.0,
    signal_engine_s: float = 5.0,
    market_hours_only: bool = True,
    heartbeat_s: float = 0.5,
    extra: str = "",
) -> str:
    """A complete test config whose accounts point at `sim`."""
    accounts = []
    for acct in ("large", "tiny"):
        spec = sim.account(acct)
        accounts.append(f"""
[accounts.{acct}]
secret_id = "{SECRET_IDS[acct]}"
expected_account_number = "{spec.account_number}"
rest_url = "{sim.rest_url}"
stream_url = "{sim.stream_url}"
data_url = "{sim.data_url}"
paper = true

[accounts.{acct}.risk]
max_order_notional = 50000
max_symbol_notional = 100000
max_open_positions = 10
daily_loss_limit = 5000
max_qty = 1000

[accounts.{acct}.schedule]
dispatcher_s = {dispatcher_s}
position_manager_s = {position_manager_s}
stream_check_s = {stream_check_s}
fill_check_s = {fill_check_s}
market_hours_only = {str(market_hours_only).lower()}
""")
    return "\n".join(accounts) + f"""
[credentials]
provider = "file"
file_path = "${{OPS_HOME}}/secrets.json"

[signal_engine]
interval_s = {signal_engine_s}

[database]
pool_max = 4
connect_timeout_s = 2
command_timeout_s = 10

[buffer]
drain_interval_s = 0.2

[watchdog]
heartbeat_interval_s = {heartbeat_s}
heartbeat_stale_s = 5

[broker]
rest_timeout_s = 2
stream_silence_s = {stream_silence_s}
# Tests make REST calls much faster than production (silence bounds under a second).
rate_limit_per_min = 6000
rate_limit_burst = 300

[broker.retry]
initial_s = 0.05
max_s = 0.5
max_attempts = 4
deadline_s = 10
{extra}
"""


@dataclass
class RoleProc:
    """A `python -m ops run ...` subprocess with its combined output in a log file."""

    proc: asyncio.subprocess.Process
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait; SIGKILL if it overstays. Returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.kill()
        return await self.proc.wait()


@dataclass
class RoleEnv:
    sim: Simulator
    env: RuntimeEnv
    pg_url: str
    procs: list[RoleProc] = field(default_factory=list)

    @property
    def config_path(self) -> Path:
        return self.env.config_path

    @property
    def home(self) -> Path:
        return self.env.home

    @property
    def secrets_path(self) -> Path:
        return self.env.home / "secrets.json"

    def write_config(self, **kw: object) -> None:
        """Rewrite the config atomically (as editors do) with `config_text(sim, **kw)`."""
        text = config_text(self.sim, **kw)  # type: ignore[arg-type]
        self.write_config_text(text)

    def write_config_text(self, text: str) -> None:
        tmp = self.config_path.with_name(f".{self.config_path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    def write_secrets(self, **keys_of: str) -> None:
        """Secrets for both accounts; `large="tiny"` puts tiny's keys under large's secret."""
        mapping = {}
        for acct, secret_id in SECRET_IDS.items():
            spec = self.sim.account(keys_of.get(acct, acct))
            mapping[secret_id] = {"api_key": spec.key_id, "api_secret": spec.secret,
                                  "account_name": acct}
        write_secrets_file(self.secrets_path, mapping)

    def subprocess_env(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
        environ.update(OPS_CONFIG=str(self.config_path), OPS_HOME=str(self.home),
                       OPS_DATABASE_URL=self.pg_url, PYTHONUNBUFFERED="1")
        environ["PYTHONPATH"] = str(REPO) + os.pathsep + environ.get("PYTHONPATH", "")
        return environ

    async def spawn(self, role: str, account: str | None = None, *args: str) -> RoleProc:
        argv = [sys.executable, "-m", "ops", "run", role]
        if account is not None:
            argv += ["--account", account]
        n = len(self.procs)
        log_path = self.home / f"{role}-{account or 'shared'}-{n}.log"
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, *args, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=self.subprocess_env(), cwd=str(REPO),
            )
        rp = RoleProc(proc, log_path)
        self.procs.append(rp)
        return rp


@pytest.fixture
async def role_env(sim: Simulator, ops_env: RuntimeEnv, pg_url: str) -> AsyncIterator[RoleEnv]:
    renv = RoleEnv(sim=sim, env=ops_env, pg_url=pg_url)
    renv.write_config()
    renv.write_secrets()
    try:
        yield renv
    finally:
        for p in renv.procs:
            if p.proc.returncode is None:
                p.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(p.proc.wait(), 10)




def order_request(symbol: str = "AAPL", qty: int = 1, side: Side = Side.BUY,
                  cid: str | None = None) -> OrderRequest:
    """A market order request with a fresh client_order_id."""
    import uuid

    return OrderRequest(symbol=symbol, side=side, qty=Decimal(qty),
                        client_order_id=cid or f"test-{uuid.uuid4().hex[:16]}")


@asynccontextmanager
async def running_role(role_env: RoleEnv, role: str, account: str | None,
                       builder: RoleBuilder | None = None,
                       **kw: float) -> AsyncIterator[RoleRuntime]:
    """Run a role in-process until its phase is "running"; stop it after (exit 0)."""
    rt = RoleRuntime(role, account, role_env.env, builder=builder,
                     install_signal_handlers=False, **kw)  # type: ignore[arg-type]
    task = asyncio.create_task(rt.run())

    def up() -> bool:
        if task.done():
            raise AssertionError(f"role {role} ended during boot: {task.result()!r}")
        return rt.phase == "running"
    try:
        await eventually(up, f"role {role} running")
        yield rt
    finally:
        rt.request_stop()
        code = await asyncio.wait_for(task, 30)
    assert code == EXIT_OK
