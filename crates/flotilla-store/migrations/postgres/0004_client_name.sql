-- Clients' own names (PostgreSQL). Keep in step with migrations/sqlite/0004_client_name.sql.
--
-- `client_name` is the name a client sent with Enroll (`flotilla client --name`), shown to operators
-- by the admin API. It is the client's own claim: not unique and not an identity. NULL for clients
-- that sent none and for every client enrolled before this migration.
ALTER TABLE clients ADD COLUMN client_name TEXT;
