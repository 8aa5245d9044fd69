-- Authorization codes, by the SHA-256 of the code: single-use and short-lived,
-- good only while the browser's session they were issued in (session_id) is.
-- They carry how the browser's session was authenticated (aal, amr,
-- authenticated_at) into the ID token, and, once exchanged, the session
-- the exchange opened (issued_session_id), which a replay of the code ends.
CREATE TABLE oauth_codes (
    code_hash         BLOB PRIMARY KEY NOT NULL,
    client_id         TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id           BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_id        BLOB NOT NULL,
    redirect_uri      TEXT NOT NULL,
    scope             TEXT NOT NULL,
    nonce             TEXT,
    code_challenge    TEXT NOT NULL,
    aal               TEXT NOT NULL,
    amr               TEXT NOT NULL,
    authenticated_at  INTEGER NOT NULL,
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    used_at           INTEGER,
    issued_session_id BLOB
);
CREATE INDEX oauth_codes_expires_at_idx ON oauth_codes (expires_at);

-- What a user allowed a client: the scopes, so that the consent page is not
-- shown again for them.
CREATE TABLE oauth_grants (
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scope      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- A session a client opened for a user (by exchanging a code): the client
-- and the scopes granted. NULL for the service's own sessions.
ALTER TABLE sessions ADD COLUMN client_id TEXT;
ALTER TABLE sessions ADD COLUMN scope TEXT;
CREATE INDEX sessions_client_id_idx ON sessions (client_id);
