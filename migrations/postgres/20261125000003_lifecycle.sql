-- Single-use links (email verification, password reset, email change), stored
-- as SHA-256 hashes. A token is good for one purpose, one user and the address
-- it was sent to; a newer one of the same purpose replaces it.
CREATE TABLE flow_tokens (
    token_hash BYTEA PRIMARY KEY,
    purpose    TEXT NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email      TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX flow_tokens_user_idx ON flow_tokens (user_id, purpose);
CREATE INDEX flow_tokens_expires_at_idx ON flow_tokens (expires_at);

-- Mail to send, written in the transaction of the change that causes it and
-- sent by a worker of any instance: a claim holds a message for lease_owner
-- until lease_until. The body is cleared once the message is sent or given up:
-- it carries a live token.
CREATE TABLE mail_outbox (
    id              UUID PRIMARY KEY,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      TIMESTAMPTZ NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    lease_owner     UUID,
    lease_until     TIMESTAMPTZ,
    sent_at         TIMESTAMPTZ,
    last_error      TEXT
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX mail_outbox_created_at_idx ON mail_outbox (created_at);

-- Security events, written in the transaction of the change they record. No
-- foreign keys: events outlive the users and sessions they name.
CREATE TABLE audit_events (
    id          UUID PRIMARY KEY,
    occurred_at TIMESTAMPTZ NOT NULL,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    actor_id    UUID,
    user_id     UUID,
    session_id  UUID,
    ip          TEXT,
    user_agent  TEXT,
    request_id  TEXT,
    detail      TEXT
);
CREATE INDEX audit_events_user_idx ON audit_events (user_id, id);
CREATE INDEX audit_events_type_idx ON audit_events (type, id);
CREATE INDEX audit_events_occurred_at_idx ON audit_events (occurred_at);
