-- The model registry (issue 17) (sqlite). Keep in step with migrations/postgres/0012_registry.sql.
--
-- A registered model has a name (unique across the installation), belongs to one tenant, and has
-- versions numbered from 1. A version is a copy of a committed round's model in the blob store
-- (key `registry/NAME/vN-SHA256.bin`, so job retention never removes it) with its lineage and
-- stage. At most one version is production (`production_version`); a canary serves
-- `canary_version` to `canary_percent`% of the tenant's clients. `registry_production` is the
-- history of promotions to production, newest last, that rollback walks back.
CREATE TABLE registry_models (
    name                TEXT    PRIMARY KEY,
    tenant              TEXT    NOT NULL,
    gate                TEXT,
    production_version  INTEGER,
    canary_version      INTEGER,
    canary_percent      INTEGER    NOT NULL DEFAULT 0 CHECK (canary_percent BETWEEN 0 AND 100),
    created_by          TEXT    NOT NULL,
    created_at_ms       INTEGER    NOT NULL,
    updated_at_ms       INTEGER    NOT NULL
);

CREATE TABLE registry_versions (
    name                 TEXT    NOT NULL REFERENCES registry_models (name),
    version              INTEGER    NOT NULL,
    job_id               INTEGER    NOT NULL,
    round                INTEGER    NOT NULL,
    model_sha256         TEXT    NOT NULL,
    blob_key             TEXT    NOT NULL,
    layout               TEXT    NOT NULL,
    lineage              TEXT    NOT NULL,
    stage                TEXT    NOT NULL
        CHECK (stage IN ('candidate', 'staging', 'production', 'archived')),
    gate_report          TEXT,
    registered_by        TEXT    NOT NULL,
    created_at_ms        INTEGER    NOT NULL,
    stage_changed_at_ms  INTEGER    NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE registry_production (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    name         TEXT    NOT NULL REFERENCES registry_models (name),
    version      INTEGER    NOT NULL,
    at_ms        INTEGER    NOT NULL,
    by_actor     TEXT    NOT NULL,
    rolled_back  INTEGER    NOT NULL DEFAULT 0 CHECK (rolled_back IN (0, 1))
);
CREATE INDEX registry_production_by_name ON registry_production (name, id);

-- Federated evaluations: of a registry version (name, version) or of a job's committed round
-- (job_id, round). `summary` is flotilla_registry::EvalSummary as JSON.
CREATE TABLE evaluations (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    name               TEXT,
    version            INTEGER,
    job_id             INTEGER,
    round              INTEGER,
    kind               TEXT    NOT NULL CHECK (kind IN ('on_demand', 'scheduled', 'canary', 'job')),
    requested_clients  INTEGER    NOT NULL,
    summary            TEXT    NOT NULL,
    started_at_ms      INTEGER    NOT NULL,
    finished_at_ms     INTEGER    NOT NULL,
    CHECK ((name IS NOT NULL AND version IS NOT NULL) OR (job_id IS NOT NULL AND round IS NOT NULL))
);
CREATE INDEX evaluations_by_version ON evaluations (name, version, id);
CREATE INDEX evaluations_by_round ON evaluations (job_id, round, id);
