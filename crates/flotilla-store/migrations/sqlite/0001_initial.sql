-- Flotilla store, initial schema (SQLite). Keep in step with migrations/postgres/0001_initial.sql:
-- the same tables, columns and constraints; only the DDL dialect differs. All DML in src/ is
-- portable (`$N` placeholders, RETURNING, INTEGER/TEXT only), so column types are chosen to decode
-- identically through sqlx's Any driver: integers (booleans as 0/1), text (JSON as text).

CREATE TABLE enrollment_tokens (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant         TEXT    NOT NULL,
    secret_sha256  TEXT    NOT NULL UNIQUE,
    uses_left      INTEGER NOT NULL CHECK (uses_left >= 0),
    expires_at_ms  INTEGER NOT NULL,
    created_at_ms  INTEGER NOT NULL
);

CREATE TABLE clients (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant             TEXT    NOT NULL,
    credential_sha256  TEXT    NOT NULL UNIQUE,
    enrollment_token   INTEGER REFERENCES enrollment_tokens (id),
    revoked            INTEGER NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    created_at_ms      INTEGER NOT NULL,
    last_seen_ms       INTEGER
);
CREATE INDEX clients_by_tenant ON clients (tenant, id);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant              TEXT    NOT NULL,
    name                TEXT    NOT NULL,
    spec_json           TEXT    NOT NULL,
    state               TEXT    NOT NULL
        CHECK (state IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    rounds_total        INTEGER NOT NULL CHECK (rounds_total >= 1),
    rounds_completed    INTEGER NOT NULL DEFAULT 0
        CHECK (rounds_completed >= 0 AND rounds_completed <= rounds_total),
    model_version       INTEGER NOT NULL DEFAULT 0,
    model_blob_key      TEXT,
    machine_state_json  TEXT,
    created_at_ms       INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL
);
CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX jobs_by_state ON jobs (state, id);

-- One row per committed round. The primary key (job_id, round) is the exactly-once guarantee:
-- a second commit of the same round violates it and its whole transaction is rolled back.
CREATE TABLE rounds (
    job_id             INTEGER NOT NULL REFERENCES jobs (id),
    round              INTEGER NOT NULL CHECK (round >= 1),
    attempt            INTEGER NOT NULL CHECK (attempt >= 1),
    model_version      INTEGER NOT NULL,
    participants_json  TEXT    NOT NULL,
    metrics_json       TEXT    NOT NULL,
    model_blob_key     TEXT    NOT NULL,
    committed_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (job_id, round)
);
