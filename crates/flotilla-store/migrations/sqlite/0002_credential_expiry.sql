-- Client credentials expire (SQLite). Keep in step with migrations/postgres/0002_credential_expiry.sql.
--
-- `credential_expires_at_ms` is Unix milliseconds (exclusive): from that instant the credential is
-- refused as expired and the client must enroll again. NULL means the credential never expires:
-- that is what credentials issued before this migration get, so upgrading locks no client out.
ALTER TABLE clients ADD COLUMN credential_expires_at_ms INTEGER;
