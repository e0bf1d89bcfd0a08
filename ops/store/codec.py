"""The payload codec: what a `Store` write carries (an `Op`'s JSON payload) and what its
reads return (typed rows), in both directions.

What lives here: the read models (`StoredPosition`, `AccountState`, `Incident`,
`Control`), the ops built from domain types (`trade_update_op`, `order_op`,
`run_payload`, `position_payload`) and the decoders of payloads, whether they come from
Postgres rows (`pg_payload`) or the buffer's latest state (`decode_*`). What does not:
applying ops (ops/store/ops.py), choosing Postgres or the buffer (ops/store/store.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; see pyproject overrides

from ops.core.models import Heartbeat, Order, Position, RunRecord, TradeUpdate
from ops.store.ops import Op, Payload, dumps, enc


@dataclass(frozen=True, slots=True)
class StoredPosition:
    account: str
    synced_at: datetime
    opened_at: datetime | None
    position: Position


@dataclass(frozen=True, slots=True)
class AccountState:
    name: str
    account_number: str | None
    equity: Decimal | None
    cash: Decimal | None
    buying_power: Decimal | None
    last_equity: Decimal | None
    as_of: datetime


@dataclass(frozen=True, slots=True)
class Incident:
    id: str
    kind: str
    process: str | None
    account: str | None
    detail: str
    opened_at: datetime
    restarts: int
    dedupe_key: str | None
    # Acknowledged by an operator (`ops incidents ack`, the dashboard): still open, but no
    # longer degrading the report. Payloads buffered during an outage carry neither (an
    # acknowledgement goes straight to Postgres), so they read as not acknowledged.
    acked_by: str | None = None
    acked_at: datetime | None = None

    @property
    def acked(self) -> bool:
        return self.acked_at is not None


@dataclass(frozen=True, slots=True)
class Control:
    account: str
    key: str
    value: Any
    updated_at: datetime
    updated_by: str


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _dec(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def utcnow() -> datetime:
    return datetime.now(UTC)


def pg_payload(row: asyncpg.Record) -> Payload:
    """A Postgres row in the buffer's payload form (JSON-safe strings)."""
    return {k: enc(v) for k, v in row.items()}


def trade_update_op(account: str, u: TradeUpdate) -> Op:
    """The write storing one trade update exactly once (a fill by its identity, account +
    order + cumulative quantity; any other event by account + event_key)."""
    return Op("order_event", {
        "account": account, "event_key": u.event_key, "order_id": u.order.id,
        "client_order_id": u.order.client_order_id, "symbol": u.order.symbol,
        "event": u.event, "ts": enc(u.timestamp), "execution_id": u.execution_id,
        "price": enc(u.price), "qty": enc(u.qty), "position_qty": enc(u.position_qty),
        "cum_qty": enc(u.fill_cum),
        # JSON text, encoded once: the frame as received when there is one. A replay then
        # decodes one string, not the whole nested object (rows buffered before this was
        # text hold an object; `_event_statement` takes both).
        "raw": u.raw_json if u.raw_json is not None else dumps(enc(dict(u.raw))),
    })


def order_op(account: str, o: Order, signal_id: int | None = None) -> Op:
    """The forward-only upsert of one order snapshot."""
    return Op("order", dict(enc({
        "id": o.id, "account": account, "client_order_id": o.client_order_id,
        "symbol": o.symbol, "side": o.side, "order_type": o.order_type,
        "time_in_force": o.time_in_force, "qty": o.qty, "notional": o.notional,
        "filled_qty": o.filled_qty, "filled_avg_price": o.filled_avg_price,
        "limit_price": o.limit_price, "stop_price": o.stop_price, "status": o.status,
        "asset_class": o.asset_class, "created_at": o.created_at, "updated_at": o.updated_at,
        "submitted_at": o.submitted_at, "filled_at": o.filled_at,
        "canceled_at": o.canceled_at, "raw": dict(o.raw), "signal_id": signal_id,
    })))


def run_payload(rec: RunRecord) -> Payload:
    return dict(enc({
        "slot_id": rec.slot_id, "process": rec.process, "account": rec.account,
        "role": rec.role, "slot_time": rec.slot_time, "scheduled_at": rec.scheduled_at,
        "started_at": rec.started_at, "finished_at": rec.finished_at, "outcome": rec.outcome,
        "lateness_s": rec.lateness_s, "skipped_before": rec.skipped_before, "error": rec.error,
    }))


def position_payload(p: Position) -> Payload:
    return dict(enc({
        "symbol": p.symbol, "qty": p.qty, "avg_entry_price": p.avg_entry_price,
        "cost_basis": p.cost_basis, "market_value": p.market_value,
        "current_price": p.current_price, "lastday_price": p.lastday_price,
        "unrealized_pl": p.unrealized_pl, "unrealized_plpc": p.unrealized_plpc,
        "side": p.side, "asset_class": p.asset_class,
    }))


def _req_ts(value: Any) -> datetime:
    ts = _ts(None if value is None else str(value))
    if ts is None:
        raise ValueError("missing timestamp")
    return ts


def decode_heartbeat(p: Payload) -> Heartbeat:
    counters = p.get("counters") or {}
    if isinstance(counters, str):
        counters = json.loads(counters)
    return Heartbeat(
        process=p["process"], account=p.get("account"), role=p["role"], pid=int(p["pid"]),
        ts=_req_ts(p["ts"]), started_at=_req_ts(p["started_at"]), counters=counters,
    )


def decode_run(p: Payload) -> RunRecord:
    return RunRecord(
        slot_id=p["slot_id"], process=p["process"], account=p.get("account"), role=p["role"],
        slot_time=_req_ts(p["slot_time"]), scheduled_at=_req_ts(p["scheduled_at"]),
        started_at=_ts(p.get("started_at")), finished_at=_ts(p.get("finished_at")),
        outcome=p["outcome"], lateness_s=float(p.get("lateness_s") or 0.0),
        skipped_before=int(p.get("skipped_before") or 0), error=p.get("error"),
    )


def decode_positions(sync: Payload) -> list[StoredPosition]:
    synced_at = _req_ts(sync["synced_at"])
    items = sync["positions"]
    if isinstance(items, str):
        items = json.loads(items)
    out = []
    for p in items:
        pos = Position(
            symbol=p["symbol"], qty=Decimal(str(p["qty"])),
            avg_entry_price=Decimal(str(p.get("avg_entry_price") or 0)),
            cost_basis=Decimal(str(p.get("cost_basis") or 0)),
            asset_class=p.get("asset_class") or "us_equity", side=p.get("side") or "long",
            market_value=_dec(p.get("market_value")), current_price=_dec(p.get("current_price")),
            lastday_price=_dec(p.get("lastday_price")),
            unrealized_pl=_dec(p.get("unrealized_pl")),
            unrealized_plpc=_dec(p.get("unrealized_plpc")),
        )
        opened = p.get("opened_at")
        out.append(StoredPosition(sync["account"], synced_at,
                                  None if opened is None else _req_ts(opened), pos))
    return out


def decode_account(p: Payload) -> AccountState:
    return AccountState(
        name=p["account"], account_number=p.get("account_number"), equity=_dec(p.get("equity")),
        cash=_dec(p.get("cash")), buying_power=_dec(p.get("buying_power")),
        last_equity=_dec(p.get("last_equity")), as_of=_req_ts(p["as_of"]),
    )


def decode_incident(p: Payload) -> Incident:
    return Incident(
        id=str(p["id"]), kind=p["kind"], process=p.get("process"), account=p.get("account"),
        detail=p.get("detail") or "", opened_at=_req_ts(p["opened_at"]),
        restarts=int(p.get("restarts") or 0), dedupe_key=p.get("dedupe_key"),
        acked_by=p.get("acked_by"), acked_at=_ts(p.get("acked_at")),
    )


def decode_control(p: Payload) -> Control:
    value = p["value"]
    return Control(
        account=p["account"], key=p["key"], value=value, updated_at=_req_ts(p["updated_at"]),
        updated_by=p["updated_by"],
    )
