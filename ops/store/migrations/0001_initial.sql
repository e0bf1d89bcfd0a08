-- 0001_initial: the whole first schema. Every table has a natural key so that any write
-- can be replayed from the outage buffer idempotently (see ops/store/ops.py).

CREATE TABLE accounts (
    name            text PRIMARY KEY,
    account_number  text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Latest account summary per account; upserts only move forward in as_of.
CREATE TABLE account_state (
    name            text PRIMARY KEY,
    equity          numeric,
    cash            numeric,
    buying_power    numeric,
    last_equity     numeric,
    account_number  text,
    as_of           timestamptz NOT NULL
);

CREATE TABLE signals (
    id              bigserial PRIMARY KEY,
    idempotency_key text UNIQUE,
    account         text NOT NULL,
    symbol          text NOT NULL,
    side            text NOT NULL CHECK (side IN ('buy', 'sell')),
    qty             numeric,
    notional        numeric,
    order_type      text NOT NULL DEFAULT 'market',
    limit_price     numeric,
    time_in_force   text NOT NULL DEFAULT 'day',
    strategy        text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN
                        ('pending', 'claimed', 'submitted', 'rejected', 'unknown', 'expired',
                         'filled', 'canceled')),
    reason          text,
    client_order_id text UNIQUE,
    broker_order_id text,
    decided_at      timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    CHECK ((qty IS NULL) <> (notional IS NULL))
);
CREATE INDEX signals_pending_idx ON signals (account, created_at) WHERE status = 'pending';

-- The dispatcher LISTENs on 'signals'; the payload is the account name.
CREATE FUNCTION signals_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('signals', NEW.account);
    RETURN NEW;
END $$;
CREATE TRIGGER signals_notify_insert AFTER INSERT ON signals
    FOR EACH ROW EXECUTE FUNCTION signals_notify();

CREATE TABLE orders (
    id               text PRIMARY KEY,          -- the broker's order id
    account          text NOT NULL,
    client_order_id  text NOT NULL,
    symbol           text NOT NULL,
    side             text NOT NULL,
    order_type       text NOT NULL,
    time_in_force    text NOT NULL,
    qty              numeric,
    notional         numeric,
    filled_qty       numeric NOT NULL DEFAULT 0,
    filled_avg_price numeric,
    limit_price      numeric,
    stop_price       numeric,
    status           text NOT NULL,
    asset_class      text NOT NULL,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    submitted_at     timestamptz,
    filled_at        timestamptz,
    canceled_at      timestamptz,
    raw              jsonb NOT NULL DEFAULT '{}',
    signal_id        bigint,  -- no FK: a replayed order must never be refused
    UNIQUE (account, client_order_id)
);
CREATE INDEX orders_account_created_idx ON orders (account, created_at);

-- Every trade_updates event exactly once: (account, event_key) is the natural key.
CREATE TABLE order_events (
    id              bigserial PRIMARY KEY,
    account         text NOT NULL,
    event_key       text NOT NULL,
    order_id        text NOT NULL,
    client_order_id text,
    symbol          text,
    event           text NOT NULL,
    ts              timestamptz NOT NULL,
    execution_id    text,
    price           numeric,
    qty             numeric,
    position_qty    numeric,
    raw             jsonb NOT NULL DEFAULT '{}',
    received_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account, event_key)
);
CREATE INDEX order_events_order_idx ON order_events (order_id, id);
CREATE INDEX order_events_ts_idx ON order_events (account, ts);

CREATE VIEW fills AS
    SELECT * FROM order_events WHERE event IN ('fill', 'partial_fill');

-- The latest synced set per account; position_syncs guards a sync against older replays.
CREATE TABLE positions (
    account          text NOT NULL,
    symbol           text NOT NULL,
    qty              numeric NOT NULL,
    avg_entry_price  numeric,
    cost_basis       numeric,
    market_value     numeric,
    current_price    numeric,
    lastday_price    numeric,
    unrealized_pl    numeric,
    unrealized_plpc  numeric,
    side             text,
    asset_class      text,
    opened_at        timestamptz,
    synced_at        timestamptz NOT NULL,
    PRIMARY KEY (account, symbol)
);

CREATE TABLE position_syncs (
    account    text PRIMARY KEY,
    synced_at  timestamptz NOT NULL,
    count      integer NOT NULL
);

CREATE TABLE position_history (
    account          text NOT NULL,
    symbol           text NOT NULL,
    synced_at        timestamptz NOT NULL,
    qty              numeric NOT NULL,
    avg_entry_price  numeric,
    cost_basis       numeric,
    market_value     numeric,
    current_price    numeric,
    unrealized_pl    numeric,
    side             text,
    asset_class      text,
    UNIQUE (account, symbol, synced_at)
);

-- The run ledger: one row per scheduled slot; running -> final outcome, never backwards.
CREATE TABLE runs (
    slot_id        text PRIMARY KEY,
    process        text NOT NULL,
    account        text,
    role           text NOT NULL,
    slot_time      timestamptz NOT NULL,
    scheduled_at   timestamptz NOT NULL,
    started_at     timestamptz,
    finished_at    timestamptz,
    outcome        text NOT NULL,
    lateness_s     double precision NOT NULL DEFAULT 0,
    skipped_before integer NOT NULL DEFAULT 0,
    error          text
);
CREATE INDEX runs_process_finished_idx ON runs (process, finished_at DESC)
    WHERE finished_at IS NOT NULL;

CREATE TABLE heartbeats (
    process    text PRIMARY KEY,
    account    text,
    role       text NOT NULL,
    pid        integer NOT NULL,
    ts         timestamptz NOT NULL,
    started_at timestamptz NOT NULL,
    counters   jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE incidents (
    id         uuid PRIMARY KEY,
    kind       text NOT NULL,
    process    text,
    account    text,
    detail     text NOT NULL DEFAULT '',
    opened_at  timestamptz NOT NULL,
    closed_at  timestamptz,
    restarts   integer NOT NULL DEFAULT 0,
    dedupe_key text
);
-- A flapping process is one open incident, not one per restart.
CREATE UNIQUE INDEX incidents_open_dedupe_idx ON incidents (dedupe_key) WHERE closed_at IS NULL;

-- Ids of non-idempotent operations (counter bumps) already applied, so replays skip them.
CREATE TABLE applied_ops (
    op_id      text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE controls (
    account    text NOT NULL,
    key        text NOT NULL,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL,
    updated_by text NOT NULL,
    PRIMARY KEY (account, key)
);

CREATE TABLE alert_outbox (
    id              uuid PRIMARY KEY,
    incident_id     uuid REFERENCES incidents (id) ON DELETE SET NULL,
    sink            text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    last_error      text
);
CREATE INDEX alert_outbox_due_idx ON alert_outbox (next_attempt_at) WHERE sent_at IS NULL;
