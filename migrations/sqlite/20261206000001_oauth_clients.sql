-- OAuth clients. secret_hash is the SHA-256 of the client secret (none for
-- a public client); the URI lists are space-separated, exactly as
-- registered; scopes is what the client may ask for, space-separated.
CREATE TABLE oauth_clients (
    id                        TEXT PRIMARY KEY NOT NULL,
    name                      TEXT NOT NULL,
    secret_hash               BLOB,
    redirect_uris             TEXT NOT NULL,
    post_logout_redirect_uris TEXT NOT NULL,
    scopes                    TEXT NOT NULL,
    first_party               BOOLEAN NOT NULL,
    created_at                INTEGER NOT NULL
);
