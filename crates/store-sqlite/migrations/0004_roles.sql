-- Custom roles of organizations and the members who hold them (see crates/store/src/roles.rs).
-- A holding names its role together with its organization, so that the database itself refuses a
-- member holding another organization's role.
CREATE TABLE roles (
    id              TEXT    PRIMARY KEY,
    organization_id TEXT    NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    -- Space-separated `resource:action` strings (a permission never holds a space).
    permissions     TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    UNIQUE (organization_id, name),
    UNIQUE (id, organization_id)
) STRICT;

CREATE TABLE membership_roles (
    organization_id TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    role_id         TEXT    NOT NULL,
    PRIMARY KEY (organization_id, user_id, role_id),
    FOREIGN KEY (organization_id, user_id) REFERENCES memberships (organization_id, user_id) ON DELETE CASCADE,
    FOREIGN KEY (role_id, organization_id) REFERENCES roles (id, organization_id) ON DELETE CASCADE
) STRICT;
CREATE INDEX membership_roles_role ON membership_roles (role_id);
CREATE INDEX membership_roles_user ON membership_roles (user_id);
