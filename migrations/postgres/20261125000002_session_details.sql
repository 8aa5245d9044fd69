-- What a user sees of their sessions: where each was opened, and when it was
-- last refreshed.
ALTER TABLE sessions
    ADD COLUMN user_agent   TEXT,
    ADD COLUMN ip           TEXT,
    ADD COLUMN last_used_at TIMESTAMPTZ;
