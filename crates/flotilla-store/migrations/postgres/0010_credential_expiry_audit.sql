-- Whether the refusal of this client's expired credential has been written to the audit log: the
-- expiry is audited once per credential, not once per refused call.
ALTER TABLE clients ADD COLUMN credential_expiry_audited BIGINT NOT NULL DEFAULT 0;
