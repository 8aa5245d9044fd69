-- Second factors. A TOTP factor keeps its secret sealed (AES-256-GCM under
-- the key of AUTHGATE_KEY_ENCRYPTION_KEY, bound to the factor's id) and the
-- last time step used, so no code is accepted twice. A factor counts once
-- confirmed_at is set (a code from the app was checked).
CREATE TABLE mfa_factors (
    id             BLOB PRIMARY KEY NOT NULL,
    user_id        BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    secret         BLOB,
    confirmed_at   INTEGER,
    last_used_step INTEGER,
    last_used_at   INTEGER,
    created_at     INTEGER NOT NULL
);
CREATE INDEX mfa_factors_user_idx ON mfa_factors (user_id);

-- Recovery codes, shown once and stored as SHA-256 hashes (they are random,
-- 50 bits each). A code is spent once used.
CREATE TABLE recovery_codes (
    user_id   BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash BLOB NOT NULL,
    used_at   INTEGER,
    PRIMARY KEY (user_id, code_hash)
);

-- The second step of a login: the mfa_token handed out after the password,
-- stored as a SHA-256 hash, good for a few minutes and a few attempts. It
-- keeps the password hash the first step checked: the session opens only if
-- the password is still that one.
CREATE TABLE mfa_challenges (
    token_hash BLOB PRIMARY KEY NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_hash TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX mfa_challenges_expires_at_idx ON mfa_challenges (expires_at);

-- How a session was authenticated, which its refreshed tokens carry on:
-- the assurance level, the RFC 8176 methods (comma-separated) and when.
ALTER TABLE sessions ADD COLUMN aal TEXT NOT NULL DEFAULT 'aal1';
ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd';
ALTER TABLE sessions ADD COLUMN authenticated_at INTEGER;
