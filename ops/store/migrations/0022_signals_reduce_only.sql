-- A signal may only reduce or close the position in its symbol (an exit): the dispatcher's
-- `reduce_only` gate (ops/core/risk.py) refuses it when, by the time it is dispatched, it
-- would open, grow or flip one. Without it a late exit, arriving after a stop had already
-- closed the position, opened a short wherever allow_short is true.
ALTER TABLE signals ADD COLUMN IF NOT EXISTS reduce_only boolean NOT NULL DEFAULT false;
