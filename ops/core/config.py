"""The configuration's schema: the typed models of `ops.toml` and their validation.

Everything the pipeline does per account (URLs, identity, risk, schedule, exits) comes from
here, so adding an account is one more `[accounts.NAME]` table, never code. Validation turns
every problem into one `ConfigError` line `FILE: KEY.PATH: PROBLEM`, all problems at once.
The models are frozen dataclasses checked by the small engine in ops/core/schema.py (stdlib
only: every process imports this module, and pydantic cost each of them about 16 MB).

What does not live here: reading the file, the environment and the demo identity
(ops/runtime/config.py), reading secrets (ops/runtime/credentials.py), importing strategy
code (the signal engine does that; here only the `module:attr` shape is checked).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol
from urllib.parse import urlsplit

from ops.core.backoff import Backoff
from ops.core.schema import After, Before, Bounds, Invalid, MinLen, Model, Pattern, to_json
from ops.core.schema import ConfigError as ConfigError  # re-exported: part of this API
from ops.core.schema import Problem as Problem
from ops.core.schema import num as _num
from ops.core.schema import show as _show

ACCOUNT_NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
_ACCOUNT_NAME_RE = re.compile(ACCOUNT_NAME_PATTERN)
#: Roles the watchdog knows gap bounds for (program names are `<account>-<role>`).
KNOWN_ROLES = ("stream", "dispatcher", "position-manager", "signal-engine", "monitor")
#: The only variable expanded inside path settings, at use time.
_HOME_VAR = "${OPS_HOME}"


# --------------------------------------------------------------------------- field types


def _url_check(schemes: tuple[str, ...], *, origin: bool) -> After:
    """A URL validator. Messages quote the scheme/path at fault, never the whole URL:
    webhook URLs often embed tokens."""
    wanted = " or ".join(f"{s}://" for s in schemes)

    def check(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            raise Invalid(f"must be a URL starting with {wanted} (got scheme '{parts.scheme}')")
        if "@" in parts.netloc:
            raise Invalid("must not contain credentials (user@host)")
        if not parts.hostname:
            raise Invalid("must include a host")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise Invalid("has an invalid port") from None
        if origin:
            if parts.path:
                raise Invalid(
                    "must be a bare origin such as http://127.0.0.1:8765: no path and no "
                    f"trailing slash (got path '{parts.path}')"
                )
            if parts.query or parts.fragment:
                raise Invalid("must not have a query or fragment")
        return value

    return After(check)


def _secret_id_check(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9/_+=.@:-]{1,512}", value):
        raise Invalid(
            "must be a Secrets Manager name or ARN (letters, digits, / _ + = . @ : -)"
        )
    return value


def _home_path_check(value: str) -> str:
    """Only `${OPS_HOME}` is expanded; any other `${...}` is a typo worth stopping for."""
    for var in re.findall(r"\$\{[^}]*\}", value):
        if var != _HOME_VAR:
            raise Invalid(f"unsupported variable {var}: only {_HOME_VAR} is expanded")
    if not value:
        raise Invalid("must not be empty")
    if ".." in re.split(r"[/\\]", value):
        # `${OPS_HOME}/../x` leaves the runtime dir while reading as if inside it.
        raise Invalid("must not contain '..' components: write the path it means")
    return value


def _pattern_check(pattern: str, example: str) -> After:
    """A regex check whose message shows an example instead of the regex."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise Invalid(f"must look like {example} (got {_show(value)})")
        return value

    return After(check)


def _loopback_check(value: str) -> str:
    try:
        ok = ipaddress.ip_address(value).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise Invalid(
            "must be a loopback address such as 127.0.0.1: metrics are never exposed beyond "
            f"this host (got {value!r})"
        )
    return value


# 366 days: longer is a typo, and huge values overflow socket timeouts and time_t.
MAX_SECONDS = 31_622_400
Seconds = Annotated[float, Bounds(gt=0, le=MAX_SECONDS)]
#: TOML numbers (int or float) become Decimal via their text, so 0.1 stays 0.1.
Money = Annotated[Decimal, Bounds(gt=0)]
Quantity = Annotated[Decimal, Bounds(gt=0)]
OriginUrl = Annotated[str, _url_check(("http", "https"), origin=True)]
HttpUrl = Annotated[str, _url_check(("http", "https"), origin=False)]
WsUrl = Annotated[str, _url_check(("ws", "wss"), origin=False)]
HomePath = Annotated[str, After(_home_path_check)]
SecretId = Annotated[str, After(_secret_id_check)]
Port = Annotated[int, Bounds(ge=1, le=65535)]
Percent = Annotated[float, Bounds(gt=0, lt=100)]


def _bad_name_message(name: str) -> str:
    return f"invalid account name {name!r}: must match {ACCOUNT_NAME_PATTERN}"


def expand_home(value: str, env: OpsHome) -> Path:
    """Expand `${OPS_HOME}` in a path setting (at use time, so OPS_HOME may change)."""
    return Path(value.replace(_HOME_VAR, str(env.home)))


def default_secret_id(name: str) -> str:
    """The old system's secret names: `ops-pipeline/alpaca` for `large`, else `.../<tier>`."""
    return "ops-pipeline/alpaca" if name == "large" else f"ops-pipeline/alpaca/{name}"


class OpsHome(Protocol):
    """What path settings need of the runtime env (ops.runtime.env.RuntimeEnv)."""

    @property
    def home(self) -> Path: ...

    @property
    def buffer_path(self) -> Path: ...


# --------------------------------------------------------------------------- per account


class RiskLimits(Model):
    """Risk gates applied by the dispatcher before any order reaches the broker."""

    max_order_notional: Money
    """Largest notional (USD) of a single order."""
    max_symbol_notional: Money
    """Largest total exposure (USD, absolute market value) in one symbol."""
    max_open_positions: Annotated[int, Bounds(gt=0)]
    """Most symbols held at once; new entries beyond it are rejected."""
    daily_loss_limit: Money
    """Loss (USD, from the day's starting equity) at which new entries stop for the day."""
    max_qty: Quantity
    """Largest quantity (shares or contracts) of a single order."""
    allow_short: bool = False
    """Whether sell signals may open short positions."""
    allow_options: bool = False
    """Whether option contracts may be traded."""
    signal_ttl_s: Seconds = 300.0
    """A signal older than this when the dispatcher claims it is rejected as stale."""
    pdt_guard: Literal["off", "normal", "strict"] = "normal"
    """Pattern-day-trading guard for accounts under $25k (ops/core/risk.py, gate `pdt`): once
    the day trades of the last 5 business days plus the positions opened today reach 3,
    "normal" refuses entries the exit rules would close the same session (max_hold_s
    ending before the close, an option closed on its expiry day), "strict" refuses every
    entry, "off" leaves it to the broker (whose refusal may then hit an exit)."""

    def _cross_check(self) -> list[tuple[str, str]]:
        if self.max_order_notional > self.max_symbol_notional:
            return [
                (
                    "max_order_notional",
                    f"must not exceed max_symbol_notional ({self.max_symbol_notional}) "
                    f"(got {self.max_order_notional})",
                )
            ]
        return []


class Schedule(Model):
    """How often each periodic role of the account runs."""

    dispatcher_s: Seconds = 5.0
    """Interval between dispatcher runs (claim signals, gate, submit)."""
    position_manager_s: Seconds = 15.0
    """Interval between position syncs and exit-rule evaluations."""
    stream_check_s: Seconds = 10.0
    """Interval of the trade stream's health check (silence, reconnect, retries)."""
    fill_check_s: Seconds = 60.0
    """Interval of the fill completeness check: for every order the account touched, the
    stored fills against the broker's filled_qty, missing ones fetched from the activities
    API whatever their age. It also runs after every stream (re)connect."""
    market_hours_only: bool = True
    """Skip dispatcher and position-manager runs while the broker clock says closed
    (an expected idle, shown as such)."""


#: Alpaca may liquidate expiring option positions from about 15:15 New York time.
EXPIRY_LIQUIDATION = "15:15"


def _exit_by(value: str) -> str:
    if value == "off":
        return value
    m = re.fullmatch(r"(\d{2}):(\d{2})", value)
    if m is None or int(m[1]) > 23 or int(m[2]) > 59:
        raise Invalid(f'must be "HH:MM" (New York time) or "off", got {value!r}')
    if not "09:30" <= value < EXPIRY_LIQUIDATION:
        raise Invalid(f"must be within the session and before Alpaca's expiry-day "
                      f"liquidation from about {EXPIRY_LIQUIDATION} (09:30 <= HH:MM < "
                      f"{EXPIRY_LIQUIDATION}), got {value!r}")
    return value


class ExitRules(Model):
    """Exit rules the position manager applies; unset means the rule is off."""

    stop_loss_pct: Percent | None = None
    """Close when the loss from entry reaches this percentage (5 = 5%)."""
    take_profit_pct: Annotated[float, Bounds(gt=0)] | None = None
    """Close when the gain from entry reaches this percentage."""
    trailing_stop_pct: Percent | None = None
    """Close when price falls this percentage from the best price since entry."""
    max_hold_s: Seconds | None = None
    """Close a position held longer than this many seconds."""
    close_options_days_before_expiry: Annotated[int, Bounds(ge=0)] | None = None
    """Close option positions this many calendar days before expiry (0 = on expiry day)."""
    options_expiry_day_exit_by: Annotated[str, After(_exit_by)] = "15:00"
    """On an option's expiry day, close it at this New York time ("HH:MM", before 15:15)
    whatever close_options_days_before_expiry says: Alpaca may liquidate expiring
    positions from about 15:15 (docs/broker-protocol.md 3.7). "off": hold to expiry."""


_ALPACA_PAPER_HOST = "paper-api.alpaca.markets"
_ALPACA_LIVE_HOST = "api.alpaca.markets"


class AccountConfig(Model):
    """One broker account: where it lives, who it must be, and how it may trade."""

    secret_id: SecretId
    """Secret holding `{"api_key", "api_secret", "account_name"}` for this account
    (`default_secret_id(name)` gives the conventional one)."""
    expected_account_number: Annotated[str, Pattern(r"^[A-Za-z0-9-]{1,64}$")]
    """The broker account number these credentials must belong to; every process refuses
    to run against any other account."""
    rest_url: OriginUrl
    """Trading REST origin (no `/v2`, no trailing slash), e.g. https://paper-api.alpaca.markets."""
    stream_url: WsUrl
    """trade_updates WebSocket URL, used verbatim, e.g. wss://paper-api.alpaca.markets/stream."""
    data_url: OriginUrl
    """Market data REST origin, e.g. https://data.alpaca.markets."""
    paper: bool = True
    """Paper account. Checked against Alpaca hosts so a live URL is never used by mistake."""
    risk: RiskLimits
    """Risk limits of this account."""
    schedule: Schedule = Schedule()
    """Intervals of this account's periodic roles."""
    exits: ExitRules = ExitRules()
    """Exit rules of this account's positions."""
    protective_stops: bool = True
    """Keep a stop order resting at the broker for every managed position, mirroring the
    stop-loss and trailing-stop rules (the tighter level), so a dead host, network or
    database still leaves it protected (ops/roles/protective_stops.py): GTC for equities,
    day for options (placed again for each session), replaced as the trailing level moves,
    cancelled when the position closes or is released, and cancelled before any local
    exit. false: none are placed and those resting are cancelled."""
    enabled: bool = True
    """Disabled accounts get no processes and no signals."""
    simulator: bool = False
    """One of the bundled simulator's demo accounts (`ops up --demo`; named like one of
    its accounts, `large` or `tiny`). Keys left out of the table are filled in at load:
    the URLs point at this OPS_HOME's simulator on 127.0.0.1 (the port `ops up --demo`
    started it on, else `[sim] port`) and `expected_account_number` is the number
    generated for this OPS_HOME, so no two homes share a demo account."""
    manage_external: bool = False
    """Whether positions the pipeline did not open (by hand, another tool, an assignment)
    are the pipeline's to manage: true makes every position managed (exit rules, max
    hold, close-before-expiry and a managed-only flatten act on all of it); false (the
    default) leaves external lots alone unless adopted (`ops positions adopt`)."""

    def _cross_check(self) -> list[tuple[str, str]]:
        wanted, wrong = (
            (_ALPACA_PAPER_HOST, _ALPACA_LIVE_HOST)
            if self.paper
            else (_ALPACA_LIVE_HOST, _ALPACA_PAPER_HOST)
        )
        problems: list[tuple[str, str]] = []
        for key in ("rest_url", "stream_url"):
            if urlsplit(getattr(self, key)).hostname == wrong:
                problems.append(
                    (
                        key,
                        f"paper = {str(self.paper).lower()} but this is the "
                        f"{'live' if self.paper else 'paper'} host {wrong}; use {wanted}",
                    )
                )
        return problems


# --------------------------------------------------------------------------- shared sections


class RetryConfig(Model):
    """Bounds for the shared back-off helper (`ops.core.backoff.Backoff`)."""

    initial_s: Seconds = 0.5
    """First delay before a retry."""
    max_s: Seconds = 10.0
    """Largest delay between retries."""
    max_attempts: Annotated[int, Bounds(ge=0)] = 5
    """Attempts including the first; 0 = bounded by deadline_s only."""
    deadline_s: Seconds | None = 30.0
    """Give up once this much time has passed since the first attempt."""

    def _cross_check(self) -> list[tuple[str, str]]:
        if self.initial_s > self.max_s:
            return [
                (
                    "initial_s",
                    f"must not exceed max_s ({_num(self.max_s)}) (got {_num(self.initial_s)})",
                )
            ]
        if self.max_attempts == 0 and self.deadline_s is None:
            return [("max_attempts", "0 (unbounded) needs a deadline_s")]
        return []

    def to_backoff(self) -> Backoff:
        return Backoff(
            initial_s=self.initial_s,
            max_s=self.max_s,
            max_attempts=self.max_attempts,
            deadline_s=self.deadline_s,
        )


class DatabaseConfig(Model):
    """Postgres pool settings (the URL itself comes from OPS_DATABASE_URL or is embedded)."""

    pool_min: Annotated[int, Bounds(ge=0)] = 1
    """Connections kept open per process."""
    pool_max: Annotated[int, Bounds(ge=1)] = 5
    """Most connections per process."""
    connect_timeout_s: Seconds = 5.0
    """Timeout of one connection attempt; beyond it writes go to the SQLite buffer."""
    command_timeout_s: Seconds = 30.0
    """Timeout of one statement."""
    history_retention_days: Annotated[float, Bounds(gt=0)] = 30.0
    """Run-ledger and position-history rows older than this are deleted (by the watchdog,
    in small batches). Orders, events, signals and incidents are kept."""

    def _cross_check(self) -> list[tuple[str, str]]:
        if self.pool_min > self.pool_max:
            return [
                (
                    "pool_min",
                    f"must not exceed pool_max ({_num(self.pool_max)}) (got {_num(self.pool_min)})",
                )
            ]
        return []


class BufferConfig(Model):
    """The local SQLite buffer used while Postgres is unreachable."""

    path: HomePath | None = None
    """Buffer file; `${OPS_HOME}` is expanded. Default `$OPS_HOME/buffer.sqlite3`."""
    drain_batch: Annotated[int, Bounds(gt=0)] = 5000
    """Rows replayed into Postgres per transaction."""
    drain_interval_s: Seconds = 1.0
    """How often a process tries to drain its buffer while rows remain."""

    def resolved_path(self, env: OpsHome) -> Path:
        return env.buffer_path if self.path is None else expand_home(self.path, env)


class CredentialsConfig(Model):
    """Where account secrets are read from (see `ops.runtime.credentials`)."""

    provider: Literal["aws", "env", "file"] = "aws"
    """`aws` = Secrets Manager; `env` = OPS_SECRET_<ID> variables; `file` = a 0600 JSON file."""
    file_path: HomePath = "${OPS_HOME}/secrets.json"
    """JSON file mapping secret id -> secret object (provider `file`); `${OPS_HOME}` expanded."""
    aws_region: Annotated[str, _pattern_check(r"[a-z]{2}(-[a-z]+)+-\d+", "us-east-1")] = "us-east-1"
    """Secrets Manager region (provider `aws`)."""
    aws_endpoint_url: HttpUrl | None = None
    """Secrets Manager endpoint override (moto, localstack); unset = AWS."""

    def resolved_file_path(self, env: OpsHome) -> Path:
        return expand_home(self.file_path, env)


class StrategyConfig(Model):
    """One pluggable strategy run by the signal engine."""

    name: Annotated[str, Pattern(ACCOUNT_NAME_PATTERN)]
    """Strategy name, recorded on every signal it produces."""
    callable: Annotated[
        str,
        Pattern(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"),
    ]
    """`package.module:function`; imported by the signal engine, never by config loading."""
    accounts: Annotated[list[str], MinLen(1)]
    """Accounts this strategy produces signals for (names from `[accounts]`)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Free-form parameters passed to the strategy."""
    enabled: bool = True
    """Disabled strategies are skipped."""


class SignalEngineConfig(Model):
    """The shared signal engine."""

    interval_s: Seconds = 60.0
    """Interval between strategy runs."""
    strategies: list[StrategyConfig] = field(default_factory=list)
    """Strategies, run in order each interval."""


_DEFAULT_GAP_BOUNDS: dict[str, float] = {
    "stream": 60.0,
    "dispatcher": 120.0,
    "position-manager": 180.0,
    "signal-engine": 300.0,
    "monitor": 30.0,
}


def _merge_gap_defaults(value: object) -> object:
    """Roles a `[watchdog.gap_bounds_s]` table leaves out keep their default."""
    return {**_DEFAULT_GAP_BOUNDS, **value} if isinstance(value, dict) else value


class WatchdogConfig(Model):
    """The supervisord event listener that restarts stale processes."""

    heartbeat_interval_s: Seconds = 1.0
    """How often every process writes its heartbeat."""
    heartbeat_stale_s: Seconds = 5.0
    """A RUNNING process whose heartbeat is older than this is hung: killed and restarted."""
    heartbeat_stale_by_role_s: dict[str, Seconds] = field(default_factory=dict)
    """Per role: a stale bound overriding `heartbeat_stale_s` (e.g. a role whose loop may
    legitimately block longer). Roles not given use `heartbeat_stale_s`."""
    gap_bounds_s: Annotated[dict[str, Seconds], Before(_merge_gap_defaults)] = field(
        default_factory=lambda: dict(_DEFAULT_GAP_BOUNDS))
    """Per role: longest tolerated time since the last completed run before the process is
    restarted (must exceed the role's interval). Roles not given keep their default."""
    tick_event: Literal["TICK_5", "TICK_60"] = "TICK_5"
    """supervisord TICK event the watchdog evaluates on."""
    startup_grace_s: Seconds = 15.0
    """A process younger than this is not judged on gaps yet."""
    failing_after_runs: Annotated[int, Bounds(ge=1, le=1000)] = 3
    """A process whose last this many runs failed is `failing` (alive, but not doing its
    work): the report is degraded, an incident opens and an alert goes out."""
    failing_share: Annotated[float, Bounds(gt=0, le=1)] = 0.5
    """Also `failing`: more than this share of its recent runs (the last 20 that did work,
    at least 5) failed, the latest one included."""
    failing_restarts: Annotated[int, Bounds(ge=0, le=100)] = 2
    """How many times the watchdog restarts a failing process within
    `failing_restart_window_s`; then it stops restarting, keeps the incident open and
    escalates the alert (never a crash loop)."""
    failing_restart_window_s: Seconds = 600.0
    """The window `failing_restarts` is counted over."""

    def _cross_check(self) -> list[tuple[str, str]]:
        problems = [
            (f"gap_bounds_s.{role}", f"unknown role '{role}' (known: {', '.join(KNOWN_ROLES)})")
            for role in self.gap_bounds_s
            if role not in KNOWN_ROLES
        ]
        problems += [
            (f"heartbeat_stale_by_role_s.{role}",
             f"unknown role '{role}' (known: {', '.join(KNOWN_ROLES)})")
            for role in self.heartbeat_stale_by_role_s
            if role not in KNOWN_ROLES
        ]
        problems += [
            (f"heartbeat_stale_by_role_s.{role}",
             "must be greater than heartbeat_interval_s "
             f"({_num(self.heartbeat_interval_s)}) (got {_num(stale)})")
            for role, stale in self.heartbeat_stale_by_role_s.items()
            if stale <= self.heartbeat_interval_s
        ]
        if self.heartbeat_stale_s <= self.heartbeat_interval_s:
            problems.append(
                (
                    "heartbeat_stale_s",
                    "must be greater than heartbeat_interval_s "
                    f"({_num(self.heartbeat_interval_s)}) (got {_num(self.heartbeat_stale_s)})",
                )
            )
        return problems

    def heartbeat_stale_for(self, role: str) -> float:
        """The stale bound of one role: its override, else `heartbeat_stale_s`."""
        return self.heartbeat_stale_by_role_s.get(role, self.heartbeat_stale_s)


class MonitorConfig(Model):
    """The monitor role (`ops run monitor`, one per deployment): the watchdog's judging,
    incidents, alerts, dead-man ping and metrics where no supervisord runs."""

    interval_s: Seconds = 2.0
    """How often it judges every process from heartbeats and run records (a hung process
    is seen within `watchdog.heartbeat_stale_s` plus this)."""


class DeployConfig(Model):
    """How the processes are run."""

    layout: Literal["supervisord", "orchestrated", "auto"] = "auto"
    """"supervisord": one host, `ops up` (the watchdog restarts hung processes);
    "orchestrated": one role per container (ECS, Kubernetes), judged from heartbeats by
    the monitor; "auto": supervisord when its socket under OPS_HOME answers or `ops up`
    rendered its config there, else orchestrated. `ops status` and `ops dash` say which."""


class AlertsConfig(Model):
    """Alert sinks; alerts go through an outbox with retries."""

    webhook_urls: list[HttpUrl] = field(default_factory=list)
    """Webhooks receiving a JSON POST per alert (treated as secrets: never logged in full)."""
    sns_topic_arn: (
        Annotated[
            str,
            _pattern_check(
                r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}",
                "arn:aws:sns:us-east-1:123456789012:ops-alerts",
            ),
        ]
        | None
    ) = None
    """SNS topic receiving alerts."""
    deadman_url: HttpUrl | None = None
    """Healthchecks-style URL pinged while the stack is healthy; silence alerts externally."""
    deadman_interval_s: Seconds = 60.0
    """Interval between dead-man pings."""
    timeout_s: Seconds = 10.0
    """Timeout of one delivery attempt."""
    retry: RetryConfig = RetryConfig(initial_s=1.0, max_s=60.0, max_attempts=0, deadline_s=3600.0)
    """Retry bounds of one alert's delivery."""


class MetricsConfig(Model):
    """Prometheus metrics endpoint (loopback only)."""

    enabled: bool = False
    """Serve /metrics."""
    host: Annotated[str, After(_loopback_check)] = "127.0.0.1"
    """Listen address; only loopback addresses are accepted."""
    port: Port = 9464
    """Listen port."""


class SimConfig(Model):
    """The bundled Alpaca-compatible simulator (demo and tests)."""

    port: Port = 8765
    """Port on 127.0.0.1 that `ops up --demo` serves the simulator on: `--port P` overrides
    it, and when it is taken (and no --port was given) a free one is used; accounts with
    `simulator = true` follow the port actually used. The one setting to move the demo."""
    seed: int = 7
    """Seed of the synthetic market."""
    clock: Literal["open", "nyse", "closed"] = "open"
    """Market clock: always open, real NYSE regular hours, or forced closed."""


class BrokerConfig(Model):
    """Broker client behaviour shared by all accounts."""

    rest_timeout_s: Seconds = 10.0
    """Timeout of one REST call (alpaca-py sets none itself)."""
    stream_silence_s: Seconds = 60.0
    """A mute stream (socket alive, no trade updates): an order change the REST API shows
    (the completeness check lists the orders), older than this and made while the stream
    was connected, that the stream did not deliver opens `stream-silent` and forces a
    reconnect + completeness check. Also: quiet this long while orders are open asks REST
    at once. A quiet account with nothing open never alarms."""
    stream_disconnected_s: Seconds = 30.0
    """The trade stream not connected (disconnected, or refused by the broker) for this
    long opens `stream-disconnected` / `stream-refused`, whether or not orders are open."""
    stream_settle_s: Seconds = 5.0
    """Connected again for this long closes `stream-disconnected` / `stream-refused`."""
    stream_flap_drops: Annotated[int, Bounds(ge=2, le=10_000)] = 5
    """This many drops of a connected stream within `stream_flap_window_s` (each reconnect
    quick, so it is never down long) opens `stream-flapping`."""
    stream_flap_window_s: Seconds = 300.0
    """The window `stream_flap_drops` is counted over; `stream-flapping` closes once the
    stream is connected and has not dropped for this long."""
    rate_limit_per_min: Annotated[int, Bounds(ge=2)] = 200
    """REST calls per minute per API key (Alpaca allows 200), shared by all processes of
    the account: each process gets its share."""
    rate_limit_burst: Annotated[int, Bounds(gt=0)] = 20
    """Calls that may go out back to back before the budget paces them."""
    data_feed: Literal["iex", "sip"] | None = None
    """Market-data feed; unset lets the server pick."""
    retry: RetryConfig = RetryConfig()
    """Retry bounds of idempotent REST calls."""


# --------------------------------------------------------------------------- the whole file


class Config(Model):
    """The whole `ops.toml`."""

    accounts: dict[str, AccountConfig]
    """Accounts by name (`^[a-z][a-z0-9_-]{0,31}$`)."""
    database: DatabaseConfig = DatabaseConfig()
    """Postgres pool settings."""
    buffer: BufferConfig = BufferConfig()
    """Local SQLite buffer."""
    credentials: CredentialsConfig = CredentialsConfig()
    """Secret provider."""
    signal_engine: SignalEngineConfig = SignalEngineConfig()
    """Signal engine and its strategies."""
    watchdog: WatchdogConfig = WatchdogConfig()
    """Watchdog thresholds."""
    monitor: MonitorConfig = MonitorConfig()
    """The monitor role (orchestrated layout)."""
    deploy: DeployConfig = DeployConfig()
    """Deployment layout."""
    alerts: AlertsConfig = AlertsConfig()
    """Alert sinks."""
    metrics: MetricsConfig = MetricsConfig()
    """Metrics endpoint."""
    sim: SimConfig = SimConfig()
    """Simulator settings."""
    broker: BrokerConfig = BrokerConfig()
    """Broker client settings."""

    def _cross_check(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.accounts:
            problems.append(("accounts", "at least one account is required"))
        seen_secret: dict[str, str] = {}
        seen_number: dict[str, str] = {}
        gaps = self.watchdog.gap_bounds_s
        for name, acct in self.accounts.items():
            if not _ACCOUNT_NAME_RE.match(name):
                problems.append((f"accounts.{name}", _bad_name_message(name)))
            # One key pair per account, one account per key pair (invariant 5).
            if (other := seen_secret.setdefault(acct.secret_id, name)) != name:
                problems.append(
                    (
                        f"accounts.{name}.secret_id",
                        f"same secret as account '{other}' ({acct.secret_id!r}); "
                        "each account needs its own credentials",
                    )
                )
            number = acct.expected_account_number
            if (other := seen_number.setdefault(number, name)) != name:
                problems.append(
                    (
                        f"accounts.{name}.expected_account_number",
                        f"same broker account as account '{other}' ({number!r})",
                    )
                )
            for key, role in (
                ("dispatcher_s", "dispatcher"),
                ("position_manager_s", "position-manager"),
                ("stream_check_s", "stream"),
            ):
                interval = getattr(acct.schedule, key)
                if interval >= gaps[role]:
                    problems.append(
                        (
                            f"accounts.{name}.schedule.{key}",
                            f"must be less than watchdog.gap_bounds_s.{role} "
                            f"({_num(gaps[role])}), or the watchdog restarts healthy "
                            f"processes (got {_num(interval)})",
                        )
                    )
        if self.monitor.interval_s >= gaps["monitor"]:
            problems.append(
                (
                    "monitor.interval_s",
                    f"must be less than watchdog.gap_bounds_s.monitor "
                    f"({_num(gaps['monitor'])}) (got {_num(self.monitor.interval_s)})",
                )
            )
        if self.signal_engine.interval_s >= gaps["signal-engine"]:
            problems.append(
                (
                    "signal_engine.interval_s",
                    f"must be less than watchdog.gap_bounds_s.signal-engine "
                    f"({_num(gaps['signal-engine'])}) (got {_num(self.signal_engine.interval_s)})",
                )
            )
        names: set[str] = set()
        for i, strat in enumerate(self.signal_engine.strategies):
            where = f"signal_engine.strategies[{i}]"
            if strat.name in names:
                problems.append((f"{where}.name", f"duplicate strategy name '{strat.name}'"))
            names.add(strat.name)
            for acct_name in strat.accounts:
                if acct_name not in self.accounts:
                    known = ", ".join(self.accounts) or "none"
                    problems.append(
                        (
                            f"{where}.accounts",
                            f"unknown account '{acct_name}' (configured: {known})",
                        )
                    )
        return problems

    def enabled_accounts(self) -> dict[str, AccountConfig]:
        return {n: a for n, a in self.accounts.items() if a.enabled}

    def role_interval(self, role: str, account: str | None) -> float | None:
        """The interval of a role's main ticker (what its last-run gap is judged
        against), or None for a role without one or an unknown account. The one home of
        this rule: the roles' tickers, `ops status`, the dashboard, the watchdog and
        `ops gaps` all ask here."""
        if role == "signal-engine":
            return self.signal_engine.interval_s
        if role == "monitor":
            return self.monitor.interval_s
        acct = self.accounts.get(account or "")
        if acct is None:
            return None
        return {
            "stream": acct.schedule.stream_check_s,
            "dispatcher": acct.schedule.dispatcher_s,
            "position-manager": acct.schedule.position_manager_s,
        }.get(role)

    def to_public_dict(self) -> dict[str, Any]:
        """A JSON-ready view for `ops doctor`/status. Config holds no API keys, but alert
        URLs often embed tokens, so they are cut down to their origin here."""
        data: dict[str, Any] = to_json(self)
        alerts = data["alerts"]
        alerts["webhook_urls"] = [_origin_only(u) for u in alerts["webhook_urls"]]
        if alerts["deadman_url"]:
            alerts["deadman_url"] = _origin_only(alerts["deadman_url"])
        return data


def _origin_only(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…" if (parts.path or parts.query) else url



def validate_mapping(data: Mapping[str, Any], source: str,
                     problems: Sequence[Problem] = ()) -> Config:
    """Validate parsed TOML data; `problems` found before are reported with the others.
    Raises ConfigError listing every problem."""
    # Account names are checked up front too: the model's own check only runs once every
    # account body is valid, and a bad name is worth reporting alongside body errors.
    accounts = data.get("accounts")
    found = [
        Problem(f"accounts.{name}", _bad_name_message(name))
        for name in (accounts if isinstance(accounts, dict) else {})
        if not _ACCOUNT_NAME_RE.match(name)
    ]
    found += problems
    config, invalid = Config.validate(dict(data))
    found += invalid
    if config is None or found:
        raise ConfigError(source, list(dict.fromkeys(found)))
    return config
