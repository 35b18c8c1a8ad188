-- Abuse protection (see crates/store/src/{security_events,ip_rules,login_throttle}.rs).

-- What a defender needs to read an event (policy, count, network, rule id) as a JSON object of short
-- strings; never a secret, never personal data in clear (the ip stays sealed in its own column).
ALTER TABLE security_events ADD COLUMN details TEXT NOT NULL DEFAULT '{}';
CREATE INDEX security_events_at ON security_events (at);
CREATE INDEX security_events_kind_at ON security_events (kind, at);

-- Network policy: allow and deny rules for every route (scope global) or for /v1/admin/* (scope
-- admin), set by an administrator or by a detection rule (an automatic block, which always expires).
-- A network is an operator's policy, not a record about a person, so it is kept in clear; blocks of
-- single attackers' addresses expire and are purged.
CREATE TABLE ip_rules (
    id         TEXT    PRIMARY KEY,
    network    TEXT    NOT NULL,
    action     TEXT    NOT NULL CHECK (action IN ('allow', 'deny')),
    scope      TEXT    NOT NULL CHECK (scope IN ('global', 'admin')),
    source     TEXT    NOT NULL CHECK (source IN ('admin', 'detection')),
    note       TEXT    NOT NULL,
    created_by TEXT,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT,
    CHECK (source = 'admin' OR expires_at IS NOT NULL)
);
CREATE INDEX ip_rules_expires_at ON ip_rules (expires_at);

-- Failed logins per account identifier, keyed by the blind index of the address tried (the same HMAC
-- as users.email_index), so that unknown addresses are counted and locked exactly like known ones
-- (no enumeration through the lockout) and no address is stored.
CREATE TABLE login_throttle (
    subject          BYTEA   PRIMARY KEY CHECK (octet_length(subject) = 32),
    failures         INTEGER NOT NULL,
    first_failure_at BIGINT  NOT NULL,
    last_failure_at  BIGINT  NOT NULL,
    locked_until     BIGINT,
    lockouts         INTEGER NOT NULL
);
CREATE INDEX login_throttle_last_failure_at ON login_throttle (last_failure_at);

-- The addresses each owner or administrator has logged in from, as an HMAC of (account, address)
-- under the blind-index key (never the address): a login from one not listed raises an event.
CREATE TABLE known_login_ips (
    user_id       TEXT    NOT NULL,
    digest        BYTEA   NOT NULL CHECK (octet_length(digest) = 32),
    first_seen_at BIGINT  NOT NULL,
    last_seen_at  BIGINT  NOT NULL,
    PRIMARY KEY (user_id, digest)
);
