"""The signal-engine role (shared by every account): runs strategies, inserts signals.

Hot reload: an accepted config edit re-imports the strategy list (names, callables,
params, accounts) for the next slot; risk limits are read at every slot.

What lives here: `load_strategies(config)` (imports every enabled configured callable at
start; a bad "module:attr" is a StrategyError naming the config key and the value),
`AccountFeed` (one account's positions and prices, through a Broker bound to that
account), `SignalEngine.run_slot()` (per slot, per strategy, per account: build the
context, call, validate, insert) and `build(ctx)`. What does not: deciding whether a
signal may trade (the dispatcher's risk gates), strategies themselves (ops.strategies).

Idempotency: a signal's key is `<strategy>:<account>:<slot time>:<n>` (n = its position in
what the strategy returned for that slot; a manual run-now slot adds ":manual"), and the
signals table ignores a second insert of a key. A strategy being deterministic in its
context, re-running a slot (restart, retry) inserts nothing new.

Failure isolation: a strategy that raises is logged, counted and recorded as an incident
"strategy-error" (one per strategy and account, closed by its next successful run); the
other strategies and accounts go on. An invalid proposal is logged and counted, the rest
of that strategy's proposals still go in. An account whose data cannot be read this slot
is skipped; the slot then ends as an error in the run ledger (the engine did not do its
whole job), after every other account was served.

Postgres outage: signals are still computed and inserted; the store buffers them and
replays them (once, by idempotency key) when Postgres answers. The heartbeat says how many
wait that way: `signals_buffered` (this engine's signals written to the outage buffer and
not replayed yet: back to 0 at the first slot that finds the buffer empty) and
`signals_buffered.<account>` per account. The dispatchers, which cannot claim them
meanwhile, count what waits for their account from the buffer file (`signals_waiting`).

Market data: the runtime gives brokers only to per-account roles, so the engine builds
one Broker per account it serves, from that account's config and credentials, and binds
it (`bind_account(expected_account_number)`) before using it. A mismatch opens incident
"account-mismatch" and the account is never served by this process (its strategies'
signals would be computed from another account's positions); a broker that is merely
unreachable is retried at the next slot.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from ops.broker import AccountMismatchError, Broker, BrokerError
from ops.core.config import Config, StrategyConfig
from ops.core.models import Position
from ops.core.risk import RiskLimits
from ops.runtime.credentials import CredentialError, load_credentials, provider_from_config
from ops.runtime.daemon import Service
from ops.store import StorageUnavailable, Store
from ops.store.signals import existing_keys
from ops.strategies.base import (
    Strategy,
    StrategyContext,
    StrategyError,
    ValidSignal,
    load_strategy,
    validate_signal,
)

if TYPE_CHECKING:
    from ops.roles.runtime import RoleContext
    from ops.runtime.env import RuntimeEnv
    from ops.runtime.ticker import Slot

log = logging.getLogger(__name__)

ROLE = "signal-engine"
STRATEGY_ERROR_KIND = "strategy-error"
_STAMP = "%Y%m%dT%H%M%S.%fZ"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LoadedStrategy:
    name: str
    fn: Strategy
    accounts: tuple[str, ...]
    params: Mapping[str, Any]

    @property
    def symbols(self) -> list[str]:
        raw = self.params.get("symbols")
        return [s for s in raw if isinstance(s, str)] if isinstance(raw, list) else []


def load_strategies(config: Config) -> list[LoadedStrategy]:
    """Import every enabled strategy; StrategyError names `signal_engine.strategies[i]`."""
    out = []
    for i, s in enumerate(config.signal_engine.strategies):
        if s.enabled:
            out.append(_load_one(s, f"signal_engine.strategies[{i}].callable"))
    return out


def _load_one(s: StrategyConfig, where: str) -> LoadedStrategy:
    return LoadedStrategy(s.name, load_strategy(s.callable, where), tuple(s.accounts),
                          dict(s.params))


def idempotency_key(strategy: str, account: str, slot_time: datetime, n: int,
                    manual: bool = False) -> str:
    stamp = slot_time.astimezone(UTC).strftime(_STAMP)
    return f"{strategy}:{account}:{stamp}{':manual' if manual else ''}:{n}"


def strategy_dedupe_key(strategy: str, account: str) -> str:
    return f"{STRATEGY_ERROR_KIND}:{strategy}:{account}"


class MarketView(Protocol):
    """What the engine needs of one account's broker (a bound `Broker` is one)."""

    async def list_positions(self) -> list[Position]: ...

    async def latest_trades(self, symbols: Iterable[str]) -> dict[str, Decimal]: ...


class AccountFeed:
    """One account's data source: binds its Broker lazily, refuses a mismatched one."""

    def __init__(self, account: str, broker: Broker | None, expected_account_number: str,
                 *, error: str | None = None) -> None:
        self.account = account
        self.broker = broker
        self.expected = expected_account_number
        self.refused: str | None = error  # permanent: mismatch or unusable credentials
        self._bound = False

    async def view(self) -> MarketView:
        """The bound broker; raises BrokerError when unreachable (retry next slot) and
        AccountMismatchError/StrategyError when refused for good."""
        if self.refused is not None:
            raise StrategyError(self.refused)
        assert self.broker is not None
        if not self._bound:
            try:
                await self.broker.bind_account(self.expected)
            except AccountMismatchError as exc:
                self.refused = str(exc)
                raise
            self._bound = True
        return self.broker

    def close(self) -> None:
        if self.broker is not None:
            self.broker.close()


@dataclass(slots=True)
class EngineCounters:
    slots: int = 0
    runs_ok: int = 0  # (strategy, account) runs that returned
    runs_failed: int = 0  # that raised
    proposed: int = 0
    invalid: int = 0
    inserted: int = 0
    duplicates: int = 0  # already stored under the same idempotency key
    data_errors: int = 0  # account data (positions/prices) unreadable this slot
    accounts_refused: int = 0
    signals_buffered: int = 0  # written to the outage buffer, not known replayed yet
    buffered_total: int = 0  # ever written to the outage buffer by this process
    buffered_by_account: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name != "buffered_by_account"}
        out.update({f"signals_buffered.{a}": n for a, n in self.buffered_by_account.items()})
        return out

    def note_buffered(self, account: str) -> None:
        self.signals_buffered += 1
        self.buffered_total += 1
        self.buffered_by_account[account] = self.buffered_by_account.get(account, 0) + 1

    def note_replayed(self) -> None:
        self.signals_buffered = 0
        self.buffered_by_account = dict.fromkeys(self.buffered_by_account, 0)


@dataclass(slots=True)
class SlotReport:
    inserted: list[str] = field(default_factory=list)  # idempotency keys inserted
    duplicates: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # reasons
    failed: list[str] = field(default_factory=list)  # "strategy/account: error"
    data_errors: list[str] = field(default_factory=list)


class SignalEngine:
    """Runs the loaded strategies for their accounts, once per slot."""

    def __init__(
        self,
        *,
        store: Store,
        process: str,
        strategies: Sequence[LoadedStrategy],
        feeds: Mapping[str, AccountFeed],
        limits: Callable[[str], RiskLimits | None],
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.process = process
        self.strategies = list(strategies)
        self.feeds = dict(feeds)
        self._limits = limits
        self._now = now
        self.counters = EngineCounters()
        self._failing: set[tuple[str, str]] = set()  # (strategy, account) with open incident
        self._refused_reported: set[str] = set()

    def replace_strategies(self, strategies: Sequence[LoadedStrategy],
                           feeds: Mapping[str, AccountFeed]) -> None:
        """Hot reload: run `strategies` from the next slot; `feeds` adds accounts not
        served yet (existing feeds, bound or refused, are kept)."""
        self.strategies = list(strategies)
        for account, feed in feeds.items():
            if account in self.feeds:
                feed.close()
            else:
                self.feeds[account] = feed

    async def tick(self, slot: Slot) -> None:
        report = await self.run_slot(slot.slot_time, manual=slot.manual)
        if report.data_errors:
            raise RuntimeError("account data unreadable: " + "; ".join(report.data_errors))

    async def run_slot(self, slot_time: datetime, *, manual: bool = False) -> SlotReport:
        report = SlotReport()
        self.counters.slots += 1
        if self.counters.signals_buffered and not await self.store.buffer.has_pending():
            # An empty buffer: everything in it went to Postgres (or to its dead rows).
            log.info("the %d signal(s) buffered during the outage are in Postgres now",
                     self.counters.signals_buffered)
            self.counters.note_replayed()
        by_account: dict[str, list[LoadedStrategy]] = {}
        for s in self.strategies:
            for account in s.accounts:
                by_account.setdefault(account, []).append(s)
        for account, strategies in by_account.items():
            limits = self._limits(account)
            if limits is None:  # disabled or removed by a hot reload
                continue
            data = await self._account_data(account, strategies, report)
            if data is None:
                continue
            positions, prices = data
            now = self._now()
            for s in strategies:
                ctx = StrategyContext(s.name, account, limits, positions, prices, now,
                                      slot_time, s.params)
                await self._run_one(s, ctx, manual, report)
        return report

    async def _account_data(
        self, account: str, strategies: Sequence[LoadedStrategy], report: SlotReport
    ) -> tuple[dict[str, Position], dict[str, Decimal]] | None:
        feed = self.feeds.get(account)
        if feed is None:
            report.data_errors.append(f"{account}: no broker for this account")
            self.counters.data_errors += 1
            return None
        try:
            view = await feed.view()
            positions = {p.symbol: p for p in await view.list_positions() if p.qty != 0}
            wanted = dict.fromkeys([*(sym for s in strategies for sym in s.symbols),
                                    *positions])
            prices = await view.latest_trades(wanted) if wanted else {}
        except (AccountMismatchError, StrategyError) as exc:
            if account not in self._refused_reported:
                self._refused_reported.add(account)
                self.counters.accounts_refused += 1
                log.error("account %s refused by the signal engine: %s", account, exc)
                await self._incident("account-mismatch", account, str(exc),
                                     f"{self.process}:account-mismatch:{account}")
            return None
        except BrokerError as exc:
            self.counters.data_errors += 1
            report.data_errors.append(f"{account}: {exc}")
            log.warning("account %s: positions/prices unreadable this slot: %s", account, exc)
            return None
        return positions, prices

    async def _run_one(self, s: LoadedStrategy, ctx: StrategyContext, manual: bool,
                       report: SlotReport) -> None:
        who = (s.name, ctx.account)
        try:
            result = s.fn(ctx)
            if inspect.isawaitable(result):
                result = await result
            proposals = list(result)
        except Exception as exc:
            self.counters.runs_failed += 1
            text = f"{type(exc).__name__}: {exc}"
            report.failed.append(f"{s.name}/{ctx.account}: {text}")
            log.exception("strategy %s for account %s raised", s.name, ctx.account)
            if who not in self._failing:
                self._failing.add(who)
                await self._incident(STRATEGY_ERROR_KIND, ctx.account,
                                     f"strategy '{s.name}' raised for account "
                                     f"{ctx.account}: {text}",
                                     strategy_dedupe_key(*who))
            return
        self.counters.runs_ok += 1
        if who in self._failing:
            self._failing.discard(who)
            await self._close_incident(strategy_dedupe_key(*who))
        self.counters.proposed += len(proposals)
        valid: list[tuple[str, ValidSignal]] = []
        for n, proposal in enumerate(proposals):
            try:
                sig = validate_signal(proposal, ctx)
            except StrategyError as exc:
                self.counters.invalid += 1
                reason = f"strategy '{s.name}' account {ctx.account}: {exc}"
                report.invalid.append(reason)
                log.warning("invalid signal dropped: %s", reason)
                continue
            valid.append((idempotency_key(s.name, ctx.account, ctx.slot_time, n, manual), sig))
        await self._insert(s.name, ctx, valid, report)

    async def _insert(self, strategy: str, ctx: StrategyContext,
                      valid: Sequence[tuple[str, ValidSignal]], report: SlotReport) -> None:
        if not valid:
            return
        existing: set[str] = set()
        try:
            existing = await self.store.direct(existing_keys, [k for k, _ in valid])
        except StorageUnavailable:
            # Postgres away: insert_signal buffers, and the replay's ON CONFLICT DO NOTHING
            # still keeps a key from being inserted twice.
            pass
        for key, sig in valid:
            if key in existing:
                self.counters.duplicates += 1
                report.duplicates.append(key)
                continue
            sid = await self.store.insert_signal(
                account=ctx.account, symbol=sig.symbol, side=sig.side.value, qty=sig.qty,
                notional=sig.notional, order_type=sig.order_type.value,
                limit_price=sig.limit_price, strategy=strategy, idempotency_key=key,
                created_at=ctx.now, expires_at=sig.expires_at, reduce_only=sig.reduce_only,
            )
            if sid is None:  # in the outage buffer: no dispatcher can see it yet
                self.counters.note_buffered(ctx.account)
            self.counters.inserted += 1
            report.inserted.append(key)
            log.info("signal %s: %s %s %s", key, sig.side.value,
                     sig.qty if sig.qty is not None else f"${sig.notional}", sig.symbol)

    async def _incident(self, kind: str, account: str, detail: str, key: str) -> None:
        try:
            await self.store.open_incident(kind, detail=detail[:2000], process=self.process,
                                           account=account, dedupe_key=key)
        except Exception:
            log.exception("could not record incident %s", kind)

    async def _close_incident(self, key: str) -> None:
        try:
            await self.store.close_incident(dedupe_key=key)
        except Exception:
            log.exception("could not close incident %s", key)

    def close(self) -> None:
        for feed in self.feeds.values():
            feed.close()


def build_feeds(config: Config, env: RuntimeEnv, accounts: Iterable[str]) -> dict[str, AccountFeed]:
    """One unbound Broker per account, from its config and credentials. Credentials that
    cannot be loaded refuse that account (recorded at the first slot), not the process."""
    from ops.roles.runtime import broker_settings, endpoints_for

    provider = provider_from_config(config.credentials, env)
    # The engine is one more user of each account's API key, next to the per-account
    # roles: it takes its own share of the key's budget (it needs 2 calls per slot).
    settings = broker_settings(config, "signal-engine")
    feeds = {}
    for name in dict.fromkeys(accounts):
        acct = config.accounts[name]
        try:
            creds = load_credentials(name, acct, provider)
        except CredentialError as exc:
            feeds[name] = AccountFeed(name, None, acct.expected_account_number,
                                      error=f"credentials unusable: {exc}")
            continue
        feeds[name] = AccountFeed(name, Broker(endpoints_for(acct), creds, settings),
                                  acct.expected_account_number)
    return feeds


class _Closer:
    """A service that only closes the engine's brokers when the process stops."""

    name = "signal-engine-brokers"

    def __init__(self, engine: SignalEngine) -> None:
        self.engine = engine
        self._stop = asyncio.Event()

    async def run(self) -> None:
        try:
            await self._stop.wait()
        finally:
            self.engine.close()

    def request_stop(self) -> None:
        self._stop.set()


async def build(ctx: RoleContext) -> Sequence[Service]:
    """The signal engine's services. A bad strategy callable: message on stderr, exit 2."""
    if ctx.account is not None:
        raise ValueError("signal-engine is shared by every account: run it without --account")
    try:
        strategies = load_strategies(ctx.config)
    except StrategyError as exc:
        log.error("%s", exc)
        print(f"ops run {ROLE}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    if not strategies:
        log.warning("no enabled strategies in signal_engine.strategies; the engine idles")
    enabled = ctx.config.enabled_accounts()
    accounts = [a for s in strategies for a in s.accounts if a in enabled]
    feeds = build_feeds(ctx.config, ctx.env, accounts)

    def limits(account: str) -> RiskLimits | None:
        acct = ctx.config.accounts.get(account)
        return RiskLimits.from_config(acct.risk) if acct is not None and acct.enabled else None

    engine = SignalEngine(store=ctx.store, process=ctx.process, strategies=strategies,
                          feeds=feeds, limits=limits)
    ticker = ctx.ticker(ROLE, ctx.config.signal_engine.interval_s, engine.tick)
    ctx.add_counters(ROLE, engine.counters.as_dict)
    pending: set[asyncio.Task[bool]] = set()

    def reloaded(config: Config) -> None:
        task = asyncio.get_running_loop().create_task(reload_strategies(ctx, engine, config))
        pending.add(task)
        task.add_done_callback(pending.discard)

    ctx.on_reload(reloaded)
    return [ticker, _Closer(engine)]


async def reload_strategies(ctx: RoleContext, engine: SignalEngine, config: Config) -> bool:
    """Apply a reloaded [signal_engine] (strategies, params, accounts). A callable that no
    longer imports keeps the running strategies and opens incident "strategy-load" (closed
    by the next good reload); nothing else stops."""
    key = ctx.incident_key("strategy-load")
    try:
        strategies = load_strategies(config)
    except StrategyError as exc:
        await ctx.incident("strategy-load", f"strategies not reloaded, the previous ones keep "
                           f"running: {exc}", dedupe_key=key)
        return False
    enabled = config.enabled_accounts()
    new_accounts = [a for s in strategies for a in s.accounts
                    if a in enabled and a not in engine.feeds]
    feeds = await asyncio.to_thread(build_feeds, config, ctx.env, new_accounts)
    engine.replace_strategies(strategies, feeds)
    log.info("strategies reloaded: %s", ", ".join(s.name for s in strategies) or "none")
    await ctx.resolve(key)
    return True
