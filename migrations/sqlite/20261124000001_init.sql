-- Same schema as the PostgreSQL one. Timestamps are INTEGER milliseconds since
-- the Unix epoch (UTC) so that comparisons are numeric; UUIDs are 16-byte BLOBs.
CREATE TABLE users (
    id                  BLOB PRIMARY KEY NOT NULL,
    username            TEXT,
    username_normalized TEXT UNIQUE,
    email               TEXT,
    email_normalized    TEXT UNIQUE,
    email_verified      INTEGER NOT NULL DEFAULT 0,
    password_hash       TEXT NOT NULL,
    roles               TEXT NOT NULL,
    is_active           INTEGER NOT NULL DEFAULT 1,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    CHECK (username IS NOT NULL OR email IS NOT NULL)
);

CREATE TABLE sessions (
    id             BLOB PRIMARY KEY NOT NULL,
    user_id        BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    revoked_at     INTEGER,
    revoked_reason TEXT
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);
CREATE INDEX sessions_expires_at_idx ON sessions (expires_at);

CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    session_id BLOB NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
CREATE INDEX refresh_tokens_expires_at_idx ON refresh_tokens (expires_at);

CREATE TABLE signing_keys (
    kid        TEXT PRIMARY KEY NOT NULL,
    algorithm  TEXT NOT NULL,
    secret     BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
