-- Throttling state shared by the processes using this file (see src/limits).
-- Keys are SHA-256 digests; times are milliseconds since the Unix epoch.
CREATE TABLE limit_quotas (
    key BLOB PRIMARY KEY,
    tat INTEGER NOT NULL,
    allowed BOOLEAN NOT NULL
) WITHOUT ROWID;

CREATE TABLE limit_failures (
    key BLOB PRIMARY KEY,
    failures INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    allowed BOOLEAN NOT NULL
) WITHOUT ROWID;
