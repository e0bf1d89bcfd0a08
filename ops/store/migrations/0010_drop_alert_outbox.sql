-- Alerts are queued in a SQLite outbox beside the buffer (ops/alerts.py), so they are
-- sent while Postgres is down too; the Postgres table of the first schema was never used.
DROP TABLE IF EXISTS alert_outbox;
