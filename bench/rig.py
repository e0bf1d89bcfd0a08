"""What the role benchmarks share: a config + secrets pointing real role processes
(`python -m ops run ROLE --account large`) at an in-process simulator and a benchmark
Postgres, and a way to start and stop those processes.

The simulator's `large` account gets a huge cash balance so bursts of thousands of orders
never hit its buying power (the benchmark measures our side, not the simulator's gates).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from bench.common import ROOT
from ops.runtime.credentials import write_secrets_file
from ops.sim import SimConfig, Simulator
from ops.sim.accounts import make_spec

ACCOUNT = "large"
SECRET_ID = "ops-pipeline/alpaca"


def bench_simulator(seed: int = 7, *, market_step_s: float | None = None,
                    fill_lot: int = 100) -> Simulator:
    spec = make_spec(ACCOUNT, "PABENCH00001", Decimal(10) ** 10, seed, 1)
    return Simulator(SimConfig(seed=seed, clock="open", accounts=[spec],
                               market_step_s=market_step_s, fill_lot=Decimal(fill_lot),
                               rate_limit_per_min=100_000))


def config_text(sim: Simulator, *, dispatcher_s: float = 1.0) -> str:
    spec = sim.account(ACCOUNT)
    return f"""
[accounts.{ACCOUNT}]
secret_id = "{SECRET_ID}"
expected_account_number = "{spec.account_number}"
rest_url = "{sim.rest_url}"
stream_url = "{sim.stream_url}"
data_url = "{sim.data_url}"
paper = true

[accounts.{ACCOUNT}.risk]
max_order_notional = 1000000
max_symbol_notional = 100000000
max_open_positions = 50
daily_loss_limit = 1000000
max_qty = 100000

[accounts.{ACCOUNT}.schedule]
dispatcher_s = {dispatcher_s}
position_manager_s = 5
stream_check_s = 5
# The fill completeness check must not race the burst either: the benchmark mutes the
# stream on purpose, and a check in the middle would store the muted fills from the
# activities API itself. The burst measures the stream's write path alone.
fill_check_s = 3600
market_hours_only = false

[credentials]
provider = "file"
file_path = "${{OPS_HOME}}/secrets.json"

[database]
pool_max = 4

[broker]
# The silence check must not race the burst: the benchmark mutes the stream on purpose.
stream_silence_s = 600
rate_limit_per_min = 100000
rate_limit_burst = 1000
"""


@dataclass
class RoleProc:
    proc: asyncio.subprocess.Process
    log_path: Path

    async def stop(self, timeout_s: float = 20.0) -> int:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()


class RoleRig:
    """OPS_HOME + config + secrets for role processes against `sim` and `url`."""

    def __init__(self, sim: Simulator, home: Path, url: str, **config: float) -> None:
        self.sim, self.home, self.url = sim, home, url
        self.config_path = home / "ops.toml"
        self.config_path.write_text(config_text(sim, **config))
        spec = sim.account(ACCOUNT)
        write_secrets_file(home / "secrets.json", {SECRET_ID: {
            "api_key": spec.key_id, "api_secret": spec.secret, "account_name": ACCOUNT}})
        self.procs: list[RoleProc] = []

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPS_")}
        env.update(OPS_CONFIG=str(self.config_path), OPS_HOME=str(self.home),
                   OPS_DATABASE_URL=self.url, PYTHONUNBUFFERED="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
        return env

    async def spawn(self, *argv: str, name: str) -> RoleProc:
        log_path = self.home / f"{name}.log"
        with log_path.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, *argv, stdout=out, stderr=asyncio.subprocess.STDOUT,
                env=self.environ(), cwd=str(ROOT))
        rp = RoleProc(proc, log_path)
        self.procs.append(rp)
        return rp

    async def role(self, role: str) -> RoleProc:
        return await self.spawn("-m", "ops", "run", role, "--account", ACCOUNT,
                                name=f"{role}-{len(self.procs)}")

    async def close(self) -> None:
        for p in self.procs:
            await p.stop()
