-- How far each host's SQLite outage buffer has been replayed (ops/store/store.py).
-- Written in the same transaction as each replayed batch, so it is exact even when the
-- buffer cannot delete replayed rows (disk full): writers then know every buffered row is
-- in Postgres and may write to Postgres directly without overtaking one.
-- buffer_id is a uuid kept inside the buffer file: a new file never inherits a mark.
CREATE TABLE buffer_replay (
    buffer_id   text PRIMARY KEY,
    through_seq bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
