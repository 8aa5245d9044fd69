-- Passkeys (WebAuthn credentials). credential is the WebAuthn library's
-- record (public key, signature counter, flags) as JSON; credential_id is
-- the authenticator's id for it, unique across every account.
CREATE TABLE passkeys (
    id            BLOB PRIMARY KEY NOT NULL,
    user_id       BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id BLOB NOT NULL UNIQUE,
    credential    TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER
);
CREATE INDEX passkeys_user_idx ON passkeys (user_id);

-- A WebAuthn ceremony between its start and its finish: the library's
-- state (the challenge, the credentials allowed), taken once by the finish.
CREATE TABLE webauthn_ceremonies (
    id         BLOB PRIMARY KEY NOT NULL,
    purpose    TEXT NOT NULL,
    user_id    BLOB REFERENCES users (id) ON DELETE CASCADE,
    state      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX webauthn_ceremonies_expires_at_idx ON webauthn_ceremonies (expires_at);
