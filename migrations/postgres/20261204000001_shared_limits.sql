-- Throttling state every instance shares (see src/limits). UNLOGGED: it is
-- worth nothing after a crash, and a check on the path of every login and
-- refresh must not wait for a WAL flush. Keys are SHA-256 digests; times are
-- milliseconds since the Unix epoch.
CREATE UNLOGGED TABLE limit_quotas (
    key BYTEA PRIMARY KEY,
    tat BIGINT NOT NULL,
    allowed BOOLEAN NOT NULL
);

CREATE UNLOGGED TABLE limit_failures (
    key BYTEA PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_at BIGINT NOT NULL,
    allowed BOOLEAN NOT NULL
);
