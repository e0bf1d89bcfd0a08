"""`Simulator`: wires clock, market, engine, stream hub and faults to an aiohttp server.

Lifecycle: `start()` binds 127.0.0.1 (port 0 = any) and starts the market timer;
`restart()` stops the server and starts it again on the same port with state kept (in
memory, and in the `state_path` JSON file when configured); `stop()` is idempotent and
closes every socket. Also an async context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType

from aiohttp import web

from ops.sim.accounts import SimAccountSpec, default_accounts
from ops.sim.app import SimParts, build_app
from ops.sim.clock import SimClock, check_mode
from ops.sim.engine import Engine
from ops.sim.faults import FaultController, RestFaults
from ops.sim.market import Market
from ops.sim.stream import StreamHub

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass
class SimConfig:
    """Simulator settings."""

    seed: int = 7
    """Seed of the synthetic market (and of the default accounts' secrets)."""
    clock: str = "open"
    """Market clock: "open" (always), "nyse" (Mon-Fri 09:30-16:00 ET) or "closed"."""
    accounts: list[SimAccountSpec] | None = None
    """Accounts to serve; None = `default_accounts(seed)`."""
    market_step_s: float | None = 0.25
    """Seconds between automatic market steps; None or 0 = only `market.step()`."""
    fill_lot: Decimal | int = Decimal(100)
    """Largest quantity filled per step; bigger orders fill in several partial fills."""
    state_path: str | Path | None = None
    """JSON file holding accounts/orders/market across restarts (loaded if present)."""
    rate_limit_per_min: int = 200
    """Per-key REST budget per minute (Alpaca: 200)."""
    reap_delay_s: float = 0.0
    """How long a closed stream keeps its key's one-connection slot (Alpaca: ~90 s)."""

    def __post_init__(self) -> None:
        check_mode(self.clock)
        self.fill_lot = Decimal(self.fill_lot)
        if self.fill_lot <= 0:
            raise ValueError(f"SimConfig.fill_lot must be > 0, got {self.fill_lot}")
        if self.market_step_s is not None and self.market_step_s < 0:
            raise ValueError(f"SimConfig.market_step_s must be >= 0, got {self.market_step_s}")


class Simulator:
    """The Alpaca-compatible paper broker: REST + market data + trade_updates on one origin."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig()
        cfg = self.config
        self.accounts: list[SimAccountSpec] = list(cfg.accounts or default_accounts(cfg.seed))
        self.clock = SimClock(cfg.clock)
        self.market = Market(cfg.seed, self.clock)
        by_key = {a.key_id: a.name for a in self.accounts}
        self.hub = StreamHub(self._auth_name, by_key.get)
        self.engine = Engine(self.accounts, self.market, self.clock, fill_lot=Decimal(cfg.fill_lot),
                             publish=self.hub.publish)
        self.hub.faults.reap_delay_s = cfg.reap_delay_s
        self._rest_faults = RestFaults(rate_limit_per_min=cfg.rate_limit_per_min)
        self.faults = FaultController(self.engine, self.hub, self.clock, self._rest_faults,
                                      self.restart)
        self._state_path = Path(cfg.state_path) if cfg.state_path else None
        if self._state_path is not None and not self._state_path.parent.is_dir():
            raise ValueError(f"simulator state file {self._state_path}: directory does not exist")
        if self._state_path is not None and self._state_path.exists():
            self._load_state(self._state_path)
        self._runner: web.AppRunner | None = None
        self._timer: asyncio.Task[None] | None = None
        self._bg: set[asyncio.Task[None]] = set()
        self._host = "127.0.0.1"
        self.port: int | None = None

    # -- URLs and lookups ------------------------------------------------------------------
    def _origin(self) -> str:
        if self.port is None:
            raise RuntimeError("simulator is not started")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return self._origin()

    @property
    def data_url(self) -> str:
        return self._origin()

    @property
    def stream_url(self) -> str:
        return self._origin().replace("http://", "ws://", 1) + "/stream"

    def account(self, name: str) -> SimAccountSpec:
        for spec in self.accounts:
            if spec.name == name:
                return spec
        raise KeyError(f"unknown simulator account {name!r}")

    async def wait_stream(self, name: str, within_s: float = 10.0) -> None:
        """Wait until account `name` has an authenticated stream listening to trade_updates."""
        self.account(name)
        await self.hub.wait_listening(name, within_s)

    def _auth_name(self, key: str | None, secret: str | None) -> str | None:
        st = self.engine.authenticate(key, secret)
        return None if st is None else st.spec.name

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (loopback only); returns once the socket is bound."""
        if host not in LOOPBACK_HOSTS:
            raise ValueError(f"simulator binds loopback only, got host {host!r}")
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._host = "127.0.0.1" if host == "localhost" else host
        await self._serve(port)
        step = self.config.market_step_s
        if step:
            self._timer = asyncio.create_task(self._tick(step), name="sim-market")
        log.info("simulator listening on %s", self.rest_url)

    async def _serve(self, port: int) -> None:
        parts = SimParts(self.engine, self.market, self.clock, self.hub, self._rest_faults,
                         self.faults, self._after_mutation, self._schedule_restart)
        runner = web.AppRunner(build_app(parts), handle_signals=False, access_log=None,
                               shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def _close_server(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._rest_faults.release()
        await self.hub.close_all()
        await runner.cleanup()

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop serving (state kept), stay down `down_s` seconds, serve again on the same port."""
        if self.port is None:
            raise RuntimeError("simulator is not started")
        log.info("simulator restarting (down %.1fs)", down_s)
        await self._close_server()
        self._save_state()
        if down_s > 0:
            await asyncio.sleep(down_s)
        await self._serve(self.port)

    def _schedule_restart(self, down_s: float) -> None:
        task = asyncio.create_task(self.restart(down_s))
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def stop(self) -> None:
        """Close every socket and stop the market timer; safe to call twice."""
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        for task in list(self._bg):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.faults.aclose()
        await self._close_server()
        self._save_state()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def _tick(self, step_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += step_s
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            try:
                self.market.step()
                self._after_mutation()
            except Exception:
                log.exception("market step failed; continuing")
            if loop.time() - deadline > step_s:  # overran: skip missed steps, don't burst
                deadline = loop.time()

    # -- persistence -----------------------------------------------------------------------
    def _after_mutation(self) -> None:
        if self.engine.dirty:
            self._save_state()

    def _save_state(self) -> None:
        self.engine.dirty = False
        if self._state_path is None:
            return
        payload = {
            "version": 1,
            "clock": self.clock.mode,
            "market": self.market.to_json(),
            "engine": self.engine.to_json(),
        }
        tmp = self._state_path.with_name(self._state_path.name + ".tmp")
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, self._state_path)

    def _load_state(self, path: Path) -> None:
        try:
            payload = json.loads(path.read_text())
            if payload.get("version") != 1:
                raise ValueError(f"unsupported version {payload.get('version')!r}")
            self.market.load_json(payload["market"])
            self.engine.load_json(payload["engine"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"simulator state file {path}: {exc}") from exc
        log.info("simulator state loaded from %s", path)
