-- Accounts, their credentials and single-use tokens, sessions, refresh tokens, signing keys and
-- security events (see crates/store/src/{accounts,sessions,keys,security_events}.rs). Ids are
-- hyphenated uuids as text, times are unix milliseconds, token hashes are 32-byte SHA-256 digests.

-- One row per account; email_key (the case-folded address) is what makes two spellings one account.
CREATE TABLE users (
    id                TEXT    PRIMARY KEY,
    email             TEXT    NOT NULL,
    email_key         TEXT    NOT NULL UNIQUE,
    email_verified_at INTEGER,
    display_name      TEXT,
    status            TEXT    NOT NULL CHECK (status IN ('active', 'locked', 'disabled')),
    role              TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'auditor', 'member')),
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    last_login_at     INTEGER
) STRICT;

-- What a user proves their identity with; one password per user (the MFA issue adds kinds).
CREATE TABLE credentials (
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL CHECK (kind = 'password'),
    secret       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    PRIMARY KEY (user_id, kind)
) STRICT;

-- Hashes of emailed or logged single-use tokens (verify email, reset password, invite, setup).
CREATE TABLE one_time_tokens (
    hash       BLOB    PRIMARY KEY CHECK (length(hash) = 32),
    purpose    TEXT    NOT NULL CHECK (purpose IN ('verify_email', 'password_reset', 'invite', 'setup')),
    user_id    TEXT    REFERENCES users (id) ON DELETE CASCADE,
    email      TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;
CREATE INDEX one_time_tokens_user_purpose ON one_time_tokens (user_id, purpose);

-- Login sessions: bearer (refresh-token family) or cookie (only the cookie's hash is kept).
CREATE TABLE sessions (
    id             TEXT    PRIMARY KEY,
    user_id        TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           TEXT    NOT NULL CHECK (kind IN ('bearer', 'cookie')),
    cookie_hash    BLOB    UNIQUE CHECK (length(cookie_hash) = 32),
    created_at     INTEGER NOT NULL,
    last_seen_at   INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    mfa_level      INTEGER NOT NULL CHECK (mfa_level BETWEEN 0 AND 255),
    ip             TEXT,
    user_agent     TEXT,
    revoked_at     INTEGER,
    revoked_reason TEXT
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_revoked_at ON sessions (revoked_at);

-- Hashes of a bearer session's refresh tokens; a spent one coming back reveals a stolen copy.
CREATE TABLE refresh_tokens (
    hash       BLOB    PRIMARY KEY CHECK (length(hash) = 32),
    session_id TEXT    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    spent_at   INTEGER
) STRICT;
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

-- The access-token signing keyring; private keys arrive encrypted by the application.
CREATE TABLE signing_keys (
    kid         TEXT    PRIMARY KEY,
    algorithm   TEXT    NOT NULL,
    private_key BLOB    NOT NULL,
    public_key  BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    state       TEXT    NOT NULL CHECK (state IN ('current', 'retired'))
) STRICT;
-- At most one key signs: nodes starting together race to insert one, and the loser gets a conflict.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (state) WHERE state = 'current';

-- Security events for defenders; no foreign keys, because the record outlives the account.
CREATE TABLE security_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    user_id    TEXT,
    session_id TEXT,
    ip         TEXT
) STRICT;
CREATE INDEX security_events_user_at ON security_events (user_id, at);
