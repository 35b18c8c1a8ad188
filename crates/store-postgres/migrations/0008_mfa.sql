-- Second factors (see crates/store/src/mfa.rs and crates/domain/src/mfa.rs): TOTP authenticators,
-- recovery codes, passkeys, the challenges that join a password to a second factor, what a session
-- proved, and the organizations that require a second factor. Each factor lives in a table of its own
-- rather than as another `credentials.kind`: an account holds several of each, and each kind keeps
-- different state (a replay counter, a public key, a spent mark).

-- TOTP authenticators (RFC 6238). The seed is a reversible secret, so it is sealed by the application
-- under the keyring key pii_key, bound to this row, and re-encrypted with the personal data when that
-- key retires. last_step is the newest time step a code was accepted for: a code is accepted only for
-- a newer step, in one conditional write, so a code is used once (RFC 6238 section 5.2).
CREATE TABLE mfa_totp_devices (
    id           TEXT    PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    secret       BYTEA   NOT NULL,
    pii_key      TEXT    NOT NULL,
    created_at   BIGINT  NOT NULL,
    -- NULL until a first valid code confirmed the enrollment; an unconfirmed device never logs in.
    confirmed_at BIGINT,
    last_used_at BIGINT,
    last_step    BIGINT
);
CREATE INDEX mfa_totp_devices_user ON mfa_totp_devices (user_id);
-- The re-encryption job finds seeds still under a retired key through this.
CREATE INDEX mfa_totp_devices_pii_key ON mfa_totp_devices (pii_key);

-- Single-use recovery codes: only their SHA-256 is kept, like every bearer secret. A spent code keeps
-- its row (used_at set) until the set is replaced, so the count of codes left is a plain count.
CREATE TABLE mfa_recovery_codes (
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash       BYTEA   NOT NULL CHECK (octet_length(hash) = 32),
    created_at BIGINT  NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, hash)
);

-- Passkeys (WebAuthn credentials): public keys, nothing secret. The credential id is unique across
-- accounts, since an assertion names its credential before it names an account; WebAuthn caps it at
-- 1023 bytes (Web Authentication Level 2, "Credential ID"). credential is the library's JSON
-- serialization (public key, signature counter, flags).
CREATE TABLE mfa_passkeys (
    id            TEXT    PRIMARY KEY,
    user_id       TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          TEXT    NOT NULL,
    credential_id BYTEA   NOT NULL UNIQUE CHECK (octet_length(credential_id) BETWEEN 1 AND 1023),
    credential    TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX mfa_passkeys_user ON mfa_passkeys (user_id);

-- Pending second-factor challenges: a login whose password was right, a passkey registration or a
-- step-up, waiting for its second factor. Only the hash of the challenge token is kept. A challenge
-- closes when it is spent or when too many wrong answers were counted against it (closed_at set);
-- both are conditional writes, so of two racing answers at most one gets it. A challenge of a
-- session (registration, step-up) names it; a login's has no session yet.
CREATE TABLE mfa_challenges (
    hash       BYTEA   PRIMARY KEY CHECK (octet_length(hash) = 32),
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT    NOT NULL
        CHECK (purpose IN ('login_bearer', 'login_cookie', 'passkey_registration', 'reauthentication')),
    session_id TEXT    REFERENCES sessions (id) ON DELETE CASCADE,
    -- What was already proven, as the session's amr is stored.
    amr        TEXT    NOT NULL,
    -- A WebAuthn ceremony's server state (JSON), once one was started.
    ceremony   TEXT,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    failures   INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    closed_at  BIGINT,
    CHECK ((session_id IS NULL) = (purpose IN ('login_bearer', 'login_cookie')))
);
-- The purge deletes by expiry; an administrator's reset deletes by account.
CREATE INDEX mfa_challenges_expires_at ON mfa_challenges (expires_at);
CREATE INDEX mfa_challenges_user ON mfa_challenges (user_id);
CREATE INDEX mfa_challenges_session ON mfa_challenges (session_id) WHERE session_id IS NOT NULL;

-- What a session's login, or its latest re-authentication, proved (RFC 8176 amr values, space
-- separated), when, and whether it must enroll a second factor before anything else. Sessions from
-- before this migration proved a password at creation: amr 'pwd', and authenticated_at NULL is read
-- as created_at.
ALTER TABLE sessions
    ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd',
    ADD COLUMN authenticated_at BIGINT,
    ADD COLUMN mfa_enrollment_required BOOLEAN NOT NULL DEFAULT false;

-- An organization may require every member to use a second factor.
ALTER TABLE organizations ADD COLUMN requires_mfa BOOLEAN NOT NULL DEFAULT false;
