-- The single row describing this installation (see crates/store/src/instance.rs).
CREATE TABLE instance (
    singleton          SMALLINT PRIMARY KEY CHECK (singleton = 1),
    id                 TEXT     NOT NULL,
    created_at         BIGINT   NOT NULL,
    created_by_version TEXT     NOT NULL
);
