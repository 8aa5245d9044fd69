-- Single-use links (email verification, password reset, email change), stored
-- as SHA-256 hashes. A token is good for one purpose, one user and the address
-- it was sent to; a newer one of the same purpose replaces it.
CREATE TABLE flow_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    purpose    TEXT NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX flow_tokens_user_idx ON flow_tokens (user_id, purpose);
CREATE INDEX flow_tokens_expires_at_idx ON flow_tokens (expires_at);

-- Mail to send, written in the transaction of the change that causes it and
-- sent by a worker of any instance: a claim holds a message for lease_owner
-- until lease_until. The body is cleared once the message is sent or given up:
-- it carries a live token.
CREATE TABLE mail_outbox (
    id              BLOB PRIMARY KEY NOT NULL,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     BLOB,
    lease_until     INTEGER,
    sent_at         INTEGER,
    last_error      TEXT
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX mail_outbox_created_at_idx ON mail_outbox (created_at);

-- Security events, written in the transaction of the change they record. No
-- foreign keys: events outlive the users and sessions they name.
CREATE TABLE audit_events (
    id          BLOB PRIMARY KEY NOT NULL,
    occurred_at INTEGER NOT NULL,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    actor_id    BLOB,
    user_id     BLOB,
    session_id  BLOB,
    ip          TEXT,
    user_agent  TEXT,
    request_id  TEXT,
    detail      TEXT
);
CREATE INDEX audit_events_user_idx ON audit_events (user_id, id);
CREATE INDEX audit_events_type_idx ON audit_events (type, id);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
