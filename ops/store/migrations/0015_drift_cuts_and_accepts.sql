-- 0015_drift_cuts_and_accepts (issue 12).
-- 1. A drift baseline places fills by their execution time, not by their storage order
--    (a fill stored late by the completeness check is counted where it happened): the
--    baseline keeps the interval [cut_lo, cut_hi) its snapshot's cut lies in (ops/drift.py).
--    Baselines saved before are taken as exact at as_of.
-- 2. `ops positions accept TIER` (and the dashboard's action) asks the account's position
--    manager to take the broker's positions as the truth; the row is the request and, once
--    applied, its audit record: who asked and when, the positions the database expected
--    before, and the broker's that were accepted.
ALTER TABLE position_baselines ADD COLUMN cut_lo timestamptz;
ALTER TABLE position_baselines ADD COLUMN cut_hi timestamptz;
UPDATE position_baselines SET cut_lo = as_of, cut_hi = as_of;
ALTER TABLE position_baselines ALTER COLUMN cut_lo SET NOT NULL;
ALTER TABLE position_baselines ALTER COLUMN cut_hi SET NOT NULL;

CREATE TABLE position_accepts (
    id            uuid PRIMARY KEY,
    account       text NOT NULL,
    requested_by  text NOT NULL,
    requested_at  timestamptz NOT NULL,
    applied_at    timestamptz,
    applied_by    text,          -- the process that applied it
    before        jsonb,         -- {symbol: qty} the database expected
    after         jsonb,         -- {symbol: qty} the broker held, now the baseline
    detail        text
);
CREATE INDEX position_accepts_pending_idx ON position_accepts (account)
    WHERE applied_at IS NULL;
