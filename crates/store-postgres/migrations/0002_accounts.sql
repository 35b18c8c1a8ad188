-- Accounts, their credentials and single-use tokens, sessions, refresh tokens, the keyring and
-- security events (see crates/store/src/{accounts,sessions,keys,pii,security_events}.rs). Ids are
-- hyphenated uuids as text, times are unix milliseconds, token hashes are 32-byte SHA-256 digests.

-- One row per account. The address and name are sealed by the application (XChaCha20-Poly1305 under
-- the keyring key pii_key, bound to this row and column); email_index, an HMAC of the case-folded
-- address under the blind-index key index_key, is what makes two spellings one account.
CREATE TABLE users (
    id                TEXT    PRIMARY KEY,
    email             BYTEA   NOT NULL,
    email_index       BYTEA   NOT NULL UNIQUE CHECK (octet_length(email_index) = 32),
    index_key         TEXT    NOT NULL,
    email_verified_at BIGINT,
    display_name      BYTEA,
    pii_key           TEXT    NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('active', 'locked', 'disabled')),
    role              TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'auditor', 'member')),
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL,
    last_login_at     BIGINT
);
-- The re-encryption jobs find rows still under a retired key through these.
CREATE INDEX users_pii_key ON users (pii_key);
CREATE INDEX users_index_key ON users (index_key);
-- Keyset pagination orders ids byte by byte (as SQLite does), whatever the database's locale.
CREATE INDEX users_id_c ON users (id COLLATE "C");

-- What a user proves their identity with; one password per user (the MFA issue adds kinds).
CREATE TABLE credentials (
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL CHECK (kind = 'password'),
    secret       TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    last_used_at BIGINT,
    PRIMARY KEY (user_id, kind)
);

-- Hashes of emailed or logged single-use tokens (verify email, reset password, invite, setup).
CREATE TABLE one_time_tokens (
    hash       BYTEA   PRIMARY KEY CHECK (octet_length(hash) = 32),
    purpose    TEXT    NOT NULL CHECK (purpose IN ('verify_email', 'password_reset', 'invite', 'setup')),
    user_id    TEXT    REFERENCES users (id) ON DELETE CASCADE,
    email      BYTEA,
    pii_key    TEXT,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    used_at    BIGINT
);
CREATE INDEX one_time_tokens_pii_key ON one_time_tokens (pii_key);
CREATE INDEX one_time_tokens_user_purpose ON one_time_tokens (user_id, purpose);

-- Login sessions: bearer (refresh-token family) or cookie (only the cookie's hash is kept). The
-- client's ip and user agent are sealed like users' personal data. No foreign key to users: a deleted
-- account's sessions stay as revoked rows with their client details erased, so every node learns of
-- the revocation (sessions_revoked_since) before they are purged.
CREATE TABLE sessions (
    id             TEXT    PRIMARY KEY,
    user_id        TEXT    NOT NULL,
    kind           TEXT    NOT NULL CHECK (kind IN ('bearer', 'cookie')),
    cookie_hash    BYTEA   UNIQUE CHECK (octet_length(cookie_hash) = 32),
    created_at     BIGINT  NOT NULL,
    last_seen_at   BIGINT  NOT NULL,
    expires_at     BIGINT  NOT NULL,
    mfa_level      INTEGER NOT NULL CHECK (mfa_level BETWEEN 0 AND 255),
    ip             BYTEA,
    user_agent     BYTEA,
    pii_key        TEXT,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX sessions_pii_key ON sessions (pii_key);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_revoked_at ON sessions (revoked_at);

-- Hashes of a bearer session's refresh tokens; a spent one coming back reveals a stolen copy.
CREATE TABLE refresh_tokens (
    hash       BYTEA   PRIMARY KEY CHECK (octet_length(hash) = 32),
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at BIGINT  NOT NULL,
    spent_at   BIGINT
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- The keyring: token signing keys, personal-data keys, the blind-index key and the audit key. Each
-- secret arrives wrapped by the application under a key-encryption key (kek_id) that never reaches
-- the database; a destroyed key keeps its row and loses its secret.
CREATE TABLE keyring (
    id           TEXT    PRIMARY KEY,
    purpose      TEXT    NOT NULL CHECK (purpose IN ('signing', 'pii', 'blind-index', 'audit')),
    algorithm    TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('next', 'active', 'retired', 'destroyed')),
    kek_id       TEXT    NOT NULL,
    wrapped      BYTEA   CHECK ((state = 'destroyed') = (wrapped IS NULL)),
    public_key   BYTEA,
    created_at   BIGINT  NOT NULL,
    activated_at BIGINT,
    retired_at   BIGINT
);
-- One key of each purpose writes and at most one waits: nodes starting or rotating together race to
-- insert, and the loser gets a conflict.
CREATE UNIQUE INDEX keyring_one_active ON keyring (purpose) WHERE state = 'active';
CREATE UNIQUE INDEX keyring_one_next ON keyring (purpose) WHERE state = 'next';

-- Security events for defenders; no foreign keys, because the record outlives the account. seq orders
-- them; id is the identity the sealed ip is bound to.
CREATE TABLE security_events (
    seq        BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id         TEXT    NOT NULL UNIQUE,
    at         BIGINT  NOT NULL,
    kind       TEXT    NOT NULL,
    user_id    TEXT,
    session_id TEXT,
    ip         BYTEA,
    pii_key    TEXT
);
CREATE INDEX security_events_pii_key ON security_events (pii_key);
CREATE INDEX security_events_user_at ON security_events (user_id, at);
