-- 0004_position_manager: what the position manager keeps beyond the broker's view.
-- Written directly (not through the outage buffer): each table is the position manager's
-- own memory, rebuilt conservatively when Postgres is away (see ops/store/positions.py).

-- Per open position: when it opened (part of its exit client_order_id) and its water
-- marks (trailing stop), so a restart keeps both. A row is deleted when the position is
-- gone; a sign flip starts a new row (a new position).
CREATE TABLE position_exit_state (
    account     text NOT NULL,
    symbol      text NOT NULL,
    opened_at   timestamptz NOT NULL,
    long        boolean NOT NULL,
    high_water  numeric NOT NULL,
    low_water   numeric NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (account, symbol)
);

-- Drift baseline per account: the broker's positions ({symbol: signed qty}) at the last
-- sync that agreed with the database, and the highest order_events.id of the fills that
-- were accounted for then. Expected now = baseline + fills stored after fill_id.
CREATE TABLE position_baselines (
    account     text PRIMARY KEY,
    positions   jsonb NOT NULL,
    fill_id     bigint NOT NULL,
    as_of       timestamptz NOT NULL,
    confirmed   boolean NOT NULL DEFAULT false
);

-- Every exit decision that led to a submission, with its outcome: the "why" of an exit
-- order (orders has no reason column). One row per client_order_id; a repeat of the same
-- decision (restart) updates the outcome, never adds a row.
CREATE TABLE exit_decisions (
    client_order_id  text PRIMARY KEY,
    account          text NOT NULL,
    symbol           text NOT NULL,
    rule             text NOT NULL,
    side             text NOT NULL,
    qty              numeric NOT NULL,
    reason           text NOT NULL,
    outcome          text NOT NULL,
    outcome_reason   text,
    broker_order_id  text,
    decided_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 1
);
CREATE INDEX exit_decisions_account_idx ON exit_decisions (account, decided_at);
