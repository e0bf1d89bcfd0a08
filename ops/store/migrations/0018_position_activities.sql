-- 0018_position_activities (issue 14.2): broker events that change positions without a
-- fill (option expiry OPEXP, exercise OPEXC, assignment OPASN and the paired OPTRD on the
-- underlying, splits SPLIT/SSP, spin-offs, symbol changes, reorganisations), each applied
-- exactly once per (account, activity id) by the position manager (ops/roles/
-- activities.py). One row per applied activity; its effects are written in the same
-- transaction: the ownership adjustment (position_adjustments, source
-- 'activity:<activity id>'), the exit state re-based by a split (position_exit_state).
--   qty_delta      the signed change of `symbol`'s position; the drift check counts it
--                  at `at` like a fill (ops/store/positions.py fill_deltas). NULL: the
--                  quantity was unreadable (the symbol is then not compared, never
--                  blamed); 0: no position effect (an unknown type is kept, not applied).
--   at             where the drift check places it: when the position manager first saw
--                  it (Alpaca gives these a date, not a time; a published activity is
--                  already in the positions read after it).
--   managed_delta  the ownership adjustment made for it (0: none). For an activity that
--                  closes contracts or gives up shares (OPEXC, OPASN, OPEXP, the negative
--                  leg of SC/NC/REO) it is the managed part of what went: its paired row
--                  (the OPTRD, the positive leg) inherits the fraction
--                  managed_delta / qty_delta.
--   paired_with    for an OPTRD or a positive leg: the activity id it was paired with.
CREATE TABLE position_activities (
    id             bigserial PRIMARY KEY,
    account        text NOT NULL,
    activity_id    text NOT NULL,
    type           text NOT NULL,
    symbol         text,
    qty_delta      numeric,
    price          numeric,
    activity_date  date,
    at             timestamptz NOT NULL,
    managed_delta  numeric NOT NULL DEFAULT 0,
    paired_with    text,
    effect         text NOT NULL DEFAULT '',
    raw            jsonb NOT NULL,
    applied_at     timestamptz NOT NULL,
    applied_by     text NOT NULL,
    UNIQUE (account, activity_id)
);
CREATE INDEX position_activities_at_idx ON position_activities (account, at);
CREATE INDEX position_activities_date_idx ON position_activities (account, activity_date);

-- Per account: from which date activities are applied (`since`: the first day the position
-- manager read them; older ones are history its first baseline already holds) and when
-- they were last read (the next read looks back a week from there, for activities Alpaca
-- files under an earlier date).
CREATE TABLE position_activity_reads (
    account     text PRIMARY KEY,
    since       date NOT NULL,
    checked_at  timestamptz NOT NULL
);
