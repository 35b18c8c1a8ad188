-- The audit trail (see crates/store/src/audit.rs and crates/domain/src/audit.rs).

-- One row per event, in chain order. Personal data (client address, user agent) is sealed like
-- everywhere else, and the chain hashes the ciphertext; details are redacted, bounded JSON text,
-- hashed exactly as stored (TEXT, not JSONB, which would reformat it).
CREATE TABLE audit_events (
    seq             BIGINT PRIMARY KEY,
    id              TEXT   NOT NULL UNIQUE,
    at              BIGINT NOT NULL,
    actor_kind      TEXT   NOT NULL,
    actor_id        TEXT,
    on_behalf_of    TEXT,
    action          TEXT   NOT NULL,
    target_type     TEXT,
    target_id       TEXT,
    organization_id TEXT,
    ip              BYTEA,
    user_agent      BYTEA,
    pii_key         TEXT,
    request_id      TEXT,
    outcome         TEXT   NOT NULL,
    details         TEXT   NOT NULL,
    prev_hash       BYTEA  NOT NULL CHECK (length(prev_hash) = 32),
    hash            BYTEA  NOT NULL CHECK (length(hash) = 32)
);
-- Columns most events leave empty are indexed only where set (cheaper appends).
-- Listings are newest first (by seq) under one or more filters: each filter's index ends in seq,
-- so a filtered page is an index range read backwards. Action prefixes compare bytewise (C).
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_action ON audit_events ((action COLLATE "C"), seq);
CREATE INDEX audit_events_actor ON audit_events (actor_id, seq);
CREATE INDEX audit_events_on_behalf_of ON audit_events (on_behalf_of, seq) WHERE on_behalf_of IS NOT NULL;
CREATE INDEX audit_events_target ON audit_events (target_id, seq);
CREATE INDEX audit_events_organization ON audit_events (organization_id, seq) WHERE organization_id IS NOT NULL;
CREATE INDEX audit_events_pii_key ON audit_events (pii_key) WHERE pii_key IS NOT NULL;

-- The chain's end: one row, locked (SELECT ... FOR UPDATE) by every appending transaction, so that
-- nodes writing at once still form one chain, and moved under a condition on its old value.
CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT  NOT NULL,
    hash BYTEA   NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- Signed statements "event seq has this hash", made every N events or T minutes with the audit
-- key (Ed25519, wrapped in the keyring like every key).
CREATE TABLE audit_checkpoints (
    seq       BIGINT PRIMARY KEY,
    hash      BYTEA  NOT NULL CHECK (length(hash) = 32),
    at        BIGINT NOT NULL,
    key_id    TEXT   NOT NULL,
    signature BYTEA  NOT NULL
);
