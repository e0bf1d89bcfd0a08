-- 0016_incident_lifecycle (issue 13.4): one incident per (kind, subject) however many
-- processes see it, a recorded end for every incident, and operator acknowledgement.
--   seen_by       processes that reported it (a bad config edit: every process that
--                 refused it, on one incident)
--   last_seen_at  the last time its condition was reported (a repeat report updates it)
--   opened_pid, opened_host, supervised
--                 who raised it; an incident raised by a process not under supervision
--                 (a hand-run `ops run`) closes once that process is gone and its
--                 condition has not been seen again
--   acked_at, acked_by   acknowledged: stays visible, no longer makes the report degraded
--   closed_by, close_reason   who closed it (a process, the watchdog, an operator) and why
ALTER TABLE incidents ADD COLUMN seen_by text[] NOT NULL DEFAULT '{}';
ALTER TABLE incidents ADD COLUMN last_seen_at timestamptz;
ALTER TABLE incidents ADD COLUMN opened_pid integer;
ALTER TABLE incidents ADD COLUMN opened_host text;
ALTER TABLE incidents ADD COLUMN supervised boolean;
ALTER TABLE incidents ADD COLUMN acked_at timestamptz;
ALTER TABLE incidents ADD COLUMN acked_by text;
ALTER TABLE incidents ADD COLUMN closed_by text;
ALTER TABLE incidents ADD COLUMN close_reason text;
UPDATE incidents SET last_seen_at = opened_at,
                     seen_by = CASE WHEN process IS NULL THEN '{}' ELSE ARRAY[process] END;
