-- 0017_position_ownership (issue 14.1): which part of a position the pipeline manages.
-- The managed quantity of (account, symbol) = the signed fills of the pipeline's own orders
-- (client_order_id "ops-<account>-..."), plus every adjustment below; the rest of the
-- broker's position is external (placed by hand, by another tool, before the pipeline
-- started, delivered by the assignment of an external option) and is never sold unless the
-- operator adopts it. One row per event that changes the managed quantity without a
-- pipeline fill, applied exactly once by (account, source):
--   adopt / release        `ops positions adopt|release` (source 'adopt:<uuid>'; by, at: the audit)
--   split / expiry / exercise / assignment / ...
--                          a non-trade activity on a managed position (source
--                          'activity:<activity id>')
CREATE TABLE position_adjustments (
    id             bigserial PRIMARY KEY,
    account        text NOT NULL,
    symbol         text NOT NULL,
    managed_delta  numeric NOT NULL,
    kind           text NOT NULL,
    source         text NOT NULL,
    detail         text NOT NULL DEFAULT '',
    by             text NOT NULL,
    at             timestamptz NOT NULL,
    UNIQUE (account, source)
);
CREATE INDEX position_adjustments_symbol_idx ON position_adjustments (account, symbol);
-- The pipeline's fills of one symbol, read at every position-manager tick.
CREATE INDEX order_events_symbol_fills_idx ON order_events (account, symbol)
    WHERE cum_qty IS NOT NULL;
