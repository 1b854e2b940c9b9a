-- The tamper-evident audit log (PostgreSQL). Keep in step with migrations/sqlite/0007_audit.sql.
--
-- One row per security-relevant event, written in the same transaction as the change it records.
-- `hash` = SHA-256(prev_hash ‖ canonical entry) (see src/audit.rs), so altering, removing or
-- reordering a row breaks the chain. `audit_head` is the chain's end (its last seq and hash),
-- updated in the same transaction as every append: its row lock serialises appenders, and a
-- deleted tail no longer reaches it.
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    at_ms         BIGINT  NOT NULL,
    actor         TEXT    NOT NULL,
    tenant        TEXT,
    action        TEXT    NOT NULL,
    resource      TEXT    NOT NULL,
    outcome       TEXT    NOT NULL,
    details_json  TEXT    NOT NULL,
    prev_hash     TEXT    NOT NULL,
    hash          TEXT    NOT NULL
);
CREATE INDEX audit_by_tenant ON audit_log (tenant, seq);
CREATE INDEX audit_by_time ON audit_log (at_ms);

CREATE TABLE audit_head (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    seq   BIGINT  NOT NULL,
    hash  TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
