-- Retention of the high-volume history (ops/store/retention.py): the pruner deletes by
-- age in small batches, which needs an index on the age column of each table.
CREATE INDEX IF NOT EXISTS runs_slot_time_idx ON runs (slot_time);
CREATE INDEX IF NOT EXISTS position_history_synced_at_idx ON position_history (synced_at);
