-- Policies as code (PostgreSQL). Keep in step with migrations/sqlite/0009_policies.sql.
--
-- Every applied version of the coordinator's Cedar policy file is kept, never updated or deleted:
-- the highest version is the one in force. `sha256` is the hex SHA-256 of `text` (what evidence
-- packs and the audit log cite); `applied_by` is the audit log's actor string.
CREATE TABLE policies (
    version       BIGINT PRIMARY KEY,
    text          TEXT   NOT NULL,
    sha256        TEXT   NOT NULL,
    applied_by    TEXT   NOT NULL,
    applied_at_ms BIGINT NOT NULL
);
