-- Erasure by crypto-shredding (docs/decisions/0013-erasure.md). Each person gets a data key of their
-- own, created the first time an audit event records a request they made; the client address and
-- user agent of such events are sealed under it. The audit trail cannot forget a row (the chain
-- hashes it), so erasing an account deletes this key with the account (the cascade) and what those
-- events held about the person can no longer be read, while the chain still verifies.
--
-- The key itself is sealed like any personal data, under the keyring key pii_key, bound to this row.
CREATE TABLE person_keys (
    user_id    TEXT    PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret     BYTEA   NOT NULL,
    pii_key    TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
-- The re-encryption job finds keys still sealed under a retired keyring key through this.
CREATE INDEX person_keys_pii_key ON person_keys (pii_key);
