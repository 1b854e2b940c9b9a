-- The model registry (issue 17) (postgres). Keep in step with migrations/sqlite/0012_registry.sql.
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
    production_version  BIGINT,
    canary_version      BIGINT,
    canary_percent      BIGINT    NOT NULL DEFAULT 0 CHECK (canary_percent BETWEEN 0 AND 100),
    created_by          TEXT    NOT NULL,
    created_at_ms       BIGINT    NOT NULL,
    updated_at_ms       BIGINT    NOT NULL
);

CREATE TABLE registry_versions (
    name                 TEXT    NOT NULL REFERENCES registry_models (name),
    version              BIGINT    NOT NULL,
    job_id               BIGINT    NOT NULL,
    round                BIGINT    NOT NULL,
    model_sha256         TEXT    NOT NULL,
    blob_key             TEXT    NOT NULL,
    layout               TEXT    NOT NULL,
    lineage              TEXT    NOT NULL,
    stage                TEXT    NOT NULL
        CHECK (stage IN ('candidate', 'staging', 'production', 'archived')),
    gate_report          TEXT,
    registered_by        TEXT    NOT NULL,
    created_at_ms        BIGINT    NOT NULL,
    stage_changed_at_ms  BIGINT    NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE registry_production (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         TEXT    NOT NULL REFERENCES registry_models (name),
    version      BIGINT    NOT NULL,
    at_ms        BIGINT    NOT NULL,
    by_actor     TEXT    NOT NULL,
    rolled_back  BIGINT    NOT NULL DEFAULT 0 CHECK (rolled_back IN (0, 1))
);
CREATE INDEX registry_production_by_name ON registry_production (name, id);

-- Federated evaluations: of a registry version (name, version) or of a job's committed round
-- (job_id, round). `summary` is flotilla_registry::EvalSummary as JSON.
CREATE TABLE evaluations (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name               TEXT,
    version            BIGINT,
    job_id             BIGINT,
    round              BIGINT,
    kind               TEXT    NOT NULL CHECK (kind IN ('on_demand', 'scheduled', 'canary', 'job')),
    requested_clients  BIGINT    NOT NULL,
    summary            TEXT    NOT NULL,
    started_at_ms      BIGINT    NOT NULL,
    finished_at_ms     BIGINT    NOT NULL,
    CHECK ((name IS NOT NULL AND version IS NOT NULL) OR (job_id IS NOT NULL AND round IS NOT NULL))
);
CREATE INDEX evaluations_by_version ON evaluations (name, version, id);
CREATE INDEX evaluations_by_round ON evaluations (job_id, round, id);
