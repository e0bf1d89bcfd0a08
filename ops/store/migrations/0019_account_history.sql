-- 0019_account_history (issue 16.2): the account summary over time, for the dashboard's
-- equity and day-P&L history. account_state keeps only the latest row; the position
-- manager records the summary every sync (seconds apart), so this series keeps ONE row per
-- account and minute: the newest summary of that minute (as_of moves only forward, so a
-- replay from the outage buffer is a no-op). ~1,440 rows a day per account; pruned with
-- the run ledger after [database] history_retention_days (ops/store/retention.py).
CREATE TABLE account_history (
    account      text NOT NULL,
    minute       timestamptz NOT NULL,
    as_of        timestamptz NOT NULL,
    equity       numeric,
    last_equity  numeric,
    cash         numeric,
    PRIMARY KEY (account, minute)
);
CREATE INDEX account_history_minute_idx ON account_history (minute);
