-- The dashboard's signals pane reads every signal still waiting (queued, being dispatched,
-- or sent with the broker's answer unsettled) on each refresh. They are few, but without
-- this index finding them walks the whole table (signals are never pruned).
CREATE INDEX IF NOT EXISTS signals_waiting_idx ON signals (created_at DESC, id DESC)
    WHERE status IN ('pending', 'claimed', 'unknown');
