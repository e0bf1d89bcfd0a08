"""`ops doctor`: one line per check, `ok` or `FAIL`, and for each failure how to fix it.

Checks, in order: config; per account: credentials readable (never printed) and account
binding (the broker's account number is the expected one); clock skew against each
broker's clock; database (reachable, schema current); outage buffer writable;
supervisord socket (ok without it in the orchestrated layout, ops.supervise.layout); disk space
under OPS_HOME. Exit code: 0 all ok, 1 any FAIL, 2 when the
config itself cannot be loaded (nothing else can be checked without it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ops.core.backoff import Backoff
from ops.core.config import AccountConfig, Config, ConfigError
from ops.runtime.config import load_config
from ops.runtime.env import EXIT_CONFIG, RuntimeEnv, runtime_env
from ops.runtime.errors import underlying

#: Largest tolerated |local clock - broker clock|: risk gates and signal expiry use it.
MAX_SKEW_S = 2.0
MIN_FREE_BYTES = 1 << 30  # 1 GiB
MIN_FREE_FRACTION = 0.05


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def render(self) -> str:
        line = f"{'ok  ' if self.ok else 'FAIL'}  {self.name:<26} {self.detail}"
        return line if self.ok or not self.fix else f"{line}\n      fix: {self.fix}"


def _err(exc: BaseException) -> str:
    # Our own errors (credentials, broker) never carry secrets; keep the text short anyway.
    exc = underlying(exc)  # an outage: the driver's error, as before the store wrapped it
    return f"{type(exc).__name__}: {exc}"[:300]


async def check_account(env: RuntimeEnv, config: Config, name: str,
                        acct: AccountConfig) -> tuple[list[Check], float | None]:
    """Credentials and binding for one account; also returns the broker clock skew (s)."""
    from ops.broker import (
        AccountMismatchError,
        Broker,
        BrokerApiError,
        BrokerEndpoints,
        BrokerSettings,
    )
    from ops.runtime.credentials import CredentialError, load_credentials, provider_from_config

    where = f"{config.credentials.provider} provider, secret '{acct.secret_id}'"
    try:
        creds = await asyncio.to_thread(
            load_credentials, name, acct, provider_from_config(config.credentials, env))
    except CredentialError as exc:
        return [Check(f"credentials {name}", False, str(exc)[:300],
                      f"store {{api_key, api_secret, account_name: \"{name}\"}} under "
                      f"'{acct.secret_id}' ({config.credentials.provider} provider); "
                      "`ops up --demo` writes the simulator's keys")], None
    checks = [Check(f"credentials {name}", True, f"readable ({where})")]
    settings = BrokerSettings(rest_timeout_s=min(config.broker.rest_timeout_s, 5.0),
                              retry=Backoff(initial_s=0.2, max_s=1.0, max_attempts=2,
                                            deadline_s=10.0))
    endpoints = BrokerEndpoints(acct.rest_url, acct.stream_url, acct.data_url, acct.paper)
    skew: float | None = None
    async with Broker(endpoints, creds, settings) as broker:
        try:
            info = await broker.bind_account(acct.expected_account_number)
            checks.append(Check(f"account binding {name}", True,
                                f"broker account {info.account_number} at {acct.rest_url}"))
        except AccountMismatchError as exc:
            checks.append(Check(f"account binding {name}", False, str(exc)[:300],
                                f"these keys belong to another account: fix secret "
                                f"'{acct.secret_id}' or accounts.{name}.expected_account_number"))
        except Exception as exc:
            fix = (f"is the broker reachable? check accounts.{name}.rest_url "
                   "(the demo simulator runs under `ops up --demo`)")
            if isinstance(exc, BrokerApiError) and exc.http_status == 401:
                # The broker answered: it is reachable, it refused the key.
                fix = (f"the broker rejected {name}'s API key (401): rotate secret "
                       f"'{acct.secret_id}' (store a valid key pair under it)")
            checks.append(Check(f"account binding {name}", False,
                                f"{acct.rest_url}: {_err(exc)}", fix))
            return checks, None
        try:
            before = time.time()
            clock = await broker.get_clock()
            after = time.time()
            local = datetime.fromtimestamp((before + after) / 2, UTC)
            skew = (local - clock.timestamp).total_seconds()
        except Exception:
            skew = None
    return checks, skew


def _skew_check(skews: dict[str, float | None]) -> Check:
    known = {k: v for k, v in skews.items() if v is not None}
    if not known:
        return Check("clock skew", False, "no broker clock could be read",
                     "fix the account binding checks above first")
    worst_name, worst = max(known.items(), key=lambda kv: abs(kv[1]))
    detail = f"{worst:+.2f}s vs broker clock ({worst_name})"
    if abs(worst) <= MAX_SKEW_S:
        return Check("clock skew", True, detail)
    return Check("clock skew", False, f"{detail}; more than {MAX_SKEW_S:g}s",
                 "synchronise this host's clock (chrony / systemd-timesyncd)")


async def check_database(env: RuntimeEnv) -> Check:
    from ops.store import embedded
    from ops.store.migrate import load_migrations, schema_version
    from ops.store.postgres import redact_url

    url = env.database_url or embedded.embedded_url(env)
    shown = redact_url(url)
    try:
        version = await schema_version(url, connect_timeout=3, command_timeout=5)
    except Exception as exc:
        hint = ("check OPS_DATABASE_URL and that the server accepts connections"
                if env.database_url else
                "`ops up` runs the embedded Postgres (or `ops db migrate` starts it)")
        return Check("database", False, f"{shown}: {_err(exc)}", hint)
    latest = max((m.version for m in load_migrations()), default=0)
    if version < latest:
        return Check("database", False, f"{shown}: schema version {version}, code needs "
                     f"{latest}", "run `ops db migrate` (or `ops up`, which migrates)")
    return Check("database", True, f"{shown}: schema version {version}")


async def check_buffer(env: RuntimeEnv, config: Config) -> Check:
    from ops.store.buffer import Buffer

    path = config.buffer.resolved_path(env)
    try:
        buf = await Buffer.open(path)
        try:
            st = await buf.status()
        finally:
            await buf.close()
        probe = path.with_name(f".doctor-{os.getpid()}")
        probe.write_text("ok")
        probe.unlink()
    except Exception as exc:
        return Check("buffer", False, f"{path}: {_err(exc)}",
                     f"make {path.parent} writable by this user")
    detail = f"{path} writable; {st.pending} pending rows"
    if st.dead:
        return Check("buffer", False, f"{detail}; {st.dead} quarantined",
                     "inspect the quarantined rows (dead table) and fix their cause")
    return Check("buffer", True, detail)


def check_supervisor(env: RuntimeEnv, config: Config) -> Check:
    from ops.supervise.layout import configured, resolve
    from ops.supervise.supervisor import SupervisorClient, SupervisorUnavailable, conf_path

    if configured(config) == "orchestrated":
        return Check("supervisord", True, "not used: orchestrated layout (configured); "
                     "the orchestrator restarts, `ops run monitor` watches")
    client = SupervisorClient.for_env(env, timeout_s=3)
    try:
        procs = client.processes()
        pid = client.pid()
    except SupervisorUnavailable as exc:
        layout = resolve(env, config, supervisord_answers=False)
        if layout.layout == "orchestrated":
            return Check("supervisord", True, f"not used: orchestrated layout ({layout.how}); "
                         "the orchestrator restarts, `ops run monitor` watches")
        return Check("supervisord", False, str(exc), "`ops up` starts it")
    down = [p.qualified for p in procs if p.state != "RUNNING"]
    detail = f"pid {pid}, {len(procs) - len(down)}/{len(procs)} RUNNING ({client.sock})"
    if down:
        return Check("supervisord", False, f"{detail}; not running: {', '.join(down)}",
                     f"supervisorctl -c {conf_path(env)} status; see $OPS_HOME/log/NAME.log")
    return Check("supervisord", True, detail)


def check_disk(env: RuntimeEnv) -> Check:
    path: Path = env.home
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    free_gib = usage.free / (1 << 30)
    detail = f"{free_gib:.1f} GiB free of {usage.total / (1 << 30):.1f} GiB under {env.home}"
    if usage.free < MIN_FREE_BYTES or usage.free < MIN_FREE_FRACTION * usage.total:
        return Check("disk space", False, detail,
                     "free space: logs rotate under $OPS_HOME/log, the buffer grows during "
                     "outages, the embedded Postgres under $OPS_HOME/pg")
    return Check("disk space", True, detail)


async def run_checks(env: RuntimeEnv, config: Config,
                     emit: Callable[[Check], None]) -> list[Check]:
    """Run every check after the config one, emitting each line as soon as it is known."""
    out: list[Check] = []

    def put(c: Check) -> None:
        out.append(c)
        emit(c)

    skews: dict[str, float | None] = {}
    accounts = config.enabled_accounts()
    results = await asyncio.gather(*(check_account(env, config, n, a)
                                      for n, a in sorted(accounts.items())))
    for (checks, skew), name in zip(results, sorted(accounts), strict=True):
        for c in checks:
            put(c)
        skews[name] = skew
    if accounts:
        put(_skew_check(skews))
    steps: list[Callable[[], Awaitable[Check]]] = [
        lambda: check_database(env), lambda: check_buffer(env, config),
        lambda: asyncio.to_thread(check_supervisor, env, config),
        lambda: asyncio.to_thread(check_disk, env),
    ]
    for step in steps:
        put(await step())
    return out


def cli_doctor(args: argparse.Namespace) -> int:
    from ops.runtime.logs import configure_logging

    env = runtime_env()
    try:
        config = load_config(env.config_path)
    except ConfigError as exc:
        print(Check("config", False, f"{env.config_path}: cannot be loaded",
                    "fix the problems listed on stderr").render())
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    configure_logging("ops-doctor", level="CRITICAL")  # findings are the output, not logs
    n = len(config.enabled_accounts())
    print(Check("config", True, f"{env.config_path} ({n} enabled accounts)").render(),
          flush=True)
    checks = asyncio.run(run_checks(env, config, lambda c: print(c.render(), flush=True)))
    failed = [c for c in checks if not c.ok]
    print(f"{len(checks) + 1 - len(failed)} ok, {len(failed)} FAIL")
    return 1 if failed else 0


