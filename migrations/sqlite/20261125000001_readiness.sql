-- One row that readiness checks write, so that /readyz shows whether the
-- database still takes writes (a full disk refuses them), not only reads.
CREATE TABLE readiness (
    id         INTEGER PRIMARY KEY NOT NULL,
    checked_at INTEGER NOT NULL
);
