-- Principals, their roles per tenant, tenant settings and job approval (PostgreSQL). Keep in step with
-- migrations/sqlite/0008_principals.sql.
--
-- A principal is a person or a service account that calls the admin API with its own token; only
-- the token's SHA-256 is stored (like enrollment tokens and client credentials). A revoked
-- principal keeps its row (names are never reused, and the audit log names it) but its token is
-- refused. Its roles are rows of `principal_roles`, one per (tenant, role); the tenant `*` means
-- every tenant (an installation-wide `admin`).
CREATE TABLE principals (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    kind           TEXT    NOT NULL CHECK (kind IN ('person', 'service')),
    token_sha256   TEXT    NOT NULL UNIQUE,
    created_by     TEXT    NOT NULL,
    created_at_ms  BIGINT  NOT NULL,
    revoked        BIGINT  NOT NULL DEFAULT 0 CHECK (revoked IN (0, 1)),
    revoked_at_ms  BIGINT
);

CREATE TABLE principal_roles (
    principal_id  BIGINT  NOT NULL REFERENCES principals (id),
    tenant        TEXT    NOT NULL,
    role          TEXT    NOT NULL
        CHECK (role IN ('admin', 'operator', 'scientist', 'approver', 'auditor', 'viewer')),
    PRIMARY KEY (principal_id, tenant, role)
);

-- Per-tenant settings; a tenant without a row has the defaults (no approval needed).
CREATE TABLE tenant_settings (
    tenant            TEXT    PRIMARY KEY,
    require_approval  BIGINT  NOT NULL DEFAULT 0 CHECK (require_approval IN (0, 1)),
    updated_by        TEXT    NOT NULL,
    updated_at_ms     BIGINT  NOT NULL
);

-- Who submitted a job, and its approval (four eyes). `approval` is NULL for a job that needed
-- none; 'pending' while it waits (the job stays in state 'pending' and nothing runs it, so the
-- jobs.state CHECK needs no rebuild), then 'approved' (it starts) or 'rejected' (it ends
-- 'cancelled' with the reason). `approval_by`/`approval_at_ms`/`approval_reason` record the decision.
ALTER TABLE jobs ADD COLUMN submitted_by TEXT;
ALTER TABLE jobs ADD COLUMN approval TEXT CHECK (approval IN ('pending', 'approved', 'rejected'));
ALTER TABLE jobs ADD COLUMN approval_by TEXT;
ALTER TABLE jobs ADD COLUMN approval_at_ms BIGINT;
ALTER TABLE jobs ADD COLUMN approval_reason TEXT;
