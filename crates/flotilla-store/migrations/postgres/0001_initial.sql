-- Flotilla store, initial schema (PostgreSQL). Keep in step with migrations/sqlite/0001_initial.sql:
-- the same tables, columns and constraints; only the DDL dialect differs. Integers are BIGINT and
-- booleans 0/1 BIGINT (not BOOLEAN) so that rows decode identically through sqlx's Any driver;
-- JSON is TEXT for the same reason (the store never queries inside it).

CREATE TABLE enrollment_tokens (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant         TEXT   NOT NULL,
    secret_sha256  TEXT   NOT NULL UNIQUE,
    uses_left      BIGINT NOT NULL CHECK (uses_left >= 0),
    expires_at_ms  BIGINT NOT NULL,
    created_at_ms  BIGINT NOT NULL
);

CREATE TABLE clients (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant             TEXT   NOT NULL,
    credential_sha256  TEXT   NOT NULL UNIQUE,
    enrollment_token   BIGINT REFERENCES enrollment_tokens (id),
    revoked            BIGINT NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    created_at_ms      BIGINT NOT NULL,
    last_seen_ms       BIGINT
);
CREATE INDEX clients_by_tenant ON clients (tenant, id);

CREATE TABLE jobs (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant              TEXT   NOT NULL,
    name                TEXT   NOT NULL,
    spec_json           TEXT   NOT NULL,
    state               TEXT   NOT NULL
        CHECK (state IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    rounds_total        BIGINT NOT NULL CHECK (rounds_total >= 1),
    rounds_completed    BIGINT NOT NULL DEFAULT 0
        CHECK (rounds_completed >= 0 AND rounds_completed <= rounds_total),
    model_version       BIGINT NOT NULL DEFAULT 0,
    model_blob_key      TEXT,
    machine_state_json  TEXT,
    created_at_ms       BIGINT NOT NULL,
    updated_at_ms       BIGINT NOT NULL
);
CREATE INDEX jobs_by_tenant ON jobs (tenant, id);
CREATE INDEX jobs_by_state ON jobs (state, id);

-- One row per committed round. The primary key (job_id, round) is the exactly-once guarantee:
-- a second commit of the same round violates it and its whole transaction is rolled back.
CREATE TABLE rounds (
    job_id             BIGINT NOT NULL REFERENCES jobs (id),
    round              BIGINT NOT NULL CHECK (round >= 1),
    attempt            BIGINT NOT NULL CHECK (attempt >= 1),
    model_version      BIGINT NOT NULL,
    participants_json  TEXT   NOT NULL,
    metrics_json       TEXT   NOT NULL,
    model_blob_key     TEXT   NOT NULL,
    committed_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (job_id, round)
);
