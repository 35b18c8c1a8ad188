-- Service accounts and API keys (see crates/store/src/api_keys.rs). A key's secret is never stored:
-- only the SHA-256 of the current secret and, for a rotation's grace period, of the previous one. A
-- service account's id is drawn from the same random space as people's account ids.
CREATE TABLE service_accounts (
    id              TEXT    PRIMARY KEY,
    organization_id TEXT    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'auditor', 'member')),
    active          BOOLEAN NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (organization_id, name),
    UNIQUE (id, organization_id)
);

-- The organization's custom roles a service account holds besides its built-in role; a holding names
-- the organization with both the account and the role, so the database refuses another
-- organization's role.
CREATE TABLE service_account_roles (
    service_account_id TEXT    NOT NULL,
    organization_id    TEXT    NOT NULL,
    role_id            TEXT    NOT NULL,
    PRIMARY KEY (service_account_id, role_id),
    FOREIGN KEY (service_account_id, organization_id)
        REFERENCES service_accounts (id, organization_id) ON DELETE CASCADE,
    FOREIGN KEY (role_id, organization_id) REFERENCES roles (id, organization_id) ON DELETE CASCADE
);
CREATE INDEX service_account_roles_role ON service_account_roles (role_id);

-- One key, owned by exactly one person or service account. The ip of its last use is sealed like
-- every client address (pii_key names the keyring key).
CREATE TABLE api_keys (
    id                 TEXT    PRIMARY KEY,
    user_id            TEXT    REFERENCES users (id) ON DELETE CASCADE,
    service_account_id TEXT    REFERENCES service_accounts (id) ON DELETE CASCADE,
    name               TEXT    NOT NULL,
    -- Space-separated permissions and networks ('' = from anywhere).
    scopes             TEXT    NOT NULL,
    allowed_cidrs      TEXT    NOT NULL,
    secret_hash        BYTEA    NOT NULL CHECK (octet_length(secret_hash) = 32),
    previous_hash      BYTEA    CHECK (octet_length(previous_hash) = 32),
    previous_until     BIGINT,
    created_at         BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    revoked_at         BIGINT,
    last_used_at       BIGINT,
    last_used_ip       BYTEA,
    pii_key            TEXT,
    CHECK ((user_id IS NULL) <> (service_account_id IS NULL)),
    CHECK ((previous_hash IS NULL) = (previous_until IS NULL))
);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_service_account ON api_keys (service_account_id);
CREATE INDEX api_keys_pii_key ON api_keys (pii_key);
