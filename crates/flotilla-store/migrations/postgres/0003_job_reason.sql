-- Why a job ended (PostgreSQL). Keep in step with migrations/sqlite/0003_job_reason.sql.
--
-- `state_reason` is a one-line, human-readable reason written together with a state change that is
-- not progress: `failed` ("clients reported errors: …", "round 3 failed 3 times: …") and
-- `cancelled` ("cancelled by alice: wrong dataset"). NULL for jobs that completed, are running, or
-- ended before this migration existed.
ALTER TABLE jobs ADD COLUMN state_reason TEXT;
