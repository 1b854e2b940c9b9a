-- Retention (SQLite). Keep in step with migrations/postgres/0011_retention.sql.
--
-- A model blob that retention deleted (`flotilla retention run`): its round rows stay (history,
-- SHA-256, metrics), so the blob's key stays named there; this table says it is gone on purpose,
-- when, and whether the object itself has been removed from the blob store yet. The row is written
-- in the same transaction as the run's audit entry; the object is removed after that commit, and
-- `removed` is set once it is (a run retries the rows still at 0, so a failed delete is not lost).
CREATE TABLE retention_deleted_blobs (
    blob_key       TEXT    PRIMARY KEY,
    job_id         INTEGER NOT NULL,
    deleted_at_ms  INTEGER NOT NULL,
    removed        INTEGER NOT NULL DEFAULT 0 CHECK (removed IN (0, 1))
);
CREATE INDEX retention_deleted_blobs_pending ON retention_deleted_blobs (removed, blob_key);
