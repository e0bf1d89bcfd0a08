-- 0013_fill_identity: a fill is identified by (account, order_id, cum_qty) -- the order
-- and its cumulative filled quantity after that execution -- fields Alpaca documents on
-- every source (trade_updates: order.id + order.filled_qty; FILL activity: order_id +
-- cum_qty). Until now fills were keyed by execution id, and REST backfill derived that
-- id from the activity id: Alpaca promises no such link, so against an independent broker
-- the same fill was stored twice (issue 12).
--
-- 1. Fill rows get cum_qty, read from what each row kept verbatim: the stream's order
--    (raw.data.order.filled_qty) or the backfilled activity (raw.activity.cum_qty).
-- 2. Duplicates of one identity are removed, keeping the first-stored copy (lowest id,
--    so its event id is unchanged); the counts are reported as a NOTICE, which
--    `ops db migrate` and `ops up` print.
-- 3. Every row now has exactly one unique key: fills with a cum_qty by their identity,
--    every other row (and a fill whose cumulative quantity could not be read) by
--    (account, event_key) as before. Writers use ON CONFLICT DO NOTHING with no target.
-- 4. The `fills` view shows identified fills only.

ALTER TABLE order_events ADD COLUMN cum_qty numeric;

UPDATE order_events
SET cum_qty = CASE WHEN q.v ~ '^[0-9]+(\.[0-9]+)?$' AND q.v::numeric > 0
                   THEN q.v::numeric END
FROM (SELECT id, coalesce(raw #>> '{activity,cum_qty}', raw #>> '{data,order,filled_qty}') AS v
      FROM order_events WHERE event IN ('fill', 'partial_fill')) AS q
WHERE order_events.id = q.id;

DO $$
DECLARE removed bigint; checked bigint;
BEGIN
    SELECT count(*) INTO checked FROM order_events WHERE event IN ('fill', 'partial_fill');
    WITH ranked AS (
        SELECT id, row_number() OVER (PARTITION BY account, order_id, cum_qty ORDER BY id) AS n
        FROM order_events WHERE cum_qty IS NOT NULL
    ), gone AS (
        DELETE FROM order_events e USING ranked r WHERE e.id = r.id AND r.n > 1 RETURNING 1
    )
    SELECT count(*) INTO removed FROM gone;
    IF checked > 0 THEN  -- an upgrade of a database in use (a new one has nothing to say)
        RAISE NOTICE 'fill identity: % fill row(s) checked, % duplicate(s) removed (the first-stored copy of each fill kept)', checked, removed;
    END IF;
END $$;

ALTER TABLE order_events DROP CONSTRAINT order_events_account_event_key_key;
CREATE UNIQUE INDEX order_events_event_key_uq ON order_events (account, event_key)
    WHERE cum_qty IS NULL;
CREATE UNIQUE INDEX order_events_fill_uq ON order_events (account, order_id, cum_qty)
    WHERE cum_qty IS NOT NULL;

DROP VIEW fills;
CREATE VIEW fills AS
    SELECT * FROM order_events WHERE event IN ('fill', 'partial_fill') AND cum_qty IS NOT NULL;
