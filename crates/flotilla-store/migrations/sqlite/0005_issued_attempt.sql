-- The highest round attempt a coordinator may have handed tasks out for (SQLite). Keep in step with
-- migrations/postgres/0005_issued_attempt.sql.
--
-- `issued_round` and `issued_attempt` are raised (never lowered) before any task of a new attempt
-- is handed out: when a restarted or healed coordinator resumes a job and when an abandoned attempt
-- is retried. Recovery starts the job's next attempt above them, so no (round, attempt) is ever
-- issued by two coordinator incarnations and a dead one's tasks are refused as stale. 0 for jobs
-- that have not recorded one yet (and every job created before this migration).
ALTER TABLE jobs ADD COLUMN issued_round INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN issued_attempt INTEGER NOT NULL DEFAULT 0;
