-- 0014_fill_checks: the stream role's completeness check, per account (issue 12).
-- Every fill made before complete_through is stored, except for the orders listed in
-- `incomplete` (the broker reports fills for them that the activities API has not
-- supplied yet). The next check starts from complete_through, so a fill is looked for
-- whatever its age: never "since the newest stored event". The position manager reads it
-- to tell "the database may be missing fills" from a drift of the broker's positions.
CREATE TABLE fill_checks (
    account          text PRIMARY KEY,
    complete_through timestamptz NOT NULL,
    checked_at       timestamptz NOT NULL,
    orders_checked   integer NOT NULL,
    fills_added      integer NOT NULL,
    incomplete       jsonb NOT NULL DEFAULT '[]',
    failed_checks    integer NOT NULL DEFAULT 0
);

-- A position manager that sees positions it cannot explain asks for a check right away
-- (the stream role reads this at every stream check), so missing fills are recovered
-- before a mismatch is blamed on the broker.
CREATE TABLE fill_check_requests (
    account       text PRIMARY KEY,
    requested_at  timestamptz NOT NULL,
    requested_by  text NOT NULL
);
