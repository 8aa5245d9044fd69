-- Indexes that keep the cost of admin searches and purges flat as the
-- tables grow (measured with a million accounts: BENCHMARKS.md).

-- Admin search by the start of a username or email (`LIKE 'abc%'`). SQLite's
-- LIKE ignores ASCII case, so only a NOCASE index serves a LIKE prefix; the
-- normalized columns are lowercase, so nothing is lost.
CREATE INDEX users_username_prefix_idx ON users (username_normalized COLLATE NOCASE);
CREATE INDEX users_email_prefix_idx ON users (email_normalized COLLATE NOCASE);

-- The admins: the last-admin checks of every user change and deletion, and
-- the admin listing filtered by role=admin, read them without a scan of
-- every user. The predicate is written as those statements write it.
CREATE INDEX users_admins_idx ON users (id) WHERE (',' || roles || ',') LIKE '%,admin,%';

-- The purge deletes sessions expired or revoked long enough ago: with this
-- index both halves of its OR are index searches, instead of a scan of every
-- session for the last batch of each purge.
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

-- The purge deletes expired refresh tokens that were never used; used ones
-- stay with their session (reuse detection), so an index over every expiry
-- would make each batch step over all the used, expired tokens.
CREATE INDEX refresh_tokens_unused_expires_at_idx ON refresh_tokens (expires_at) WHERE used_at IS NULL;
