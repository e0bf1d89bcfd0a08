-- Operators read signals newest first (`ops signal list [--since]`, the dashboard's
-- signals pane every refresh). The table is never pruned (it is the audit trail of what
-- was traded and why), so without this index each of those reads sorts all of it.
CREATE INDEX IF NOT EXISTS signals_created_idx ON signals (created_at DESC, id DESC);
