-- A used refresh token remembers its successor for the reuse grace window:
-- the successor's hash, and the successor sealed under a key only the used
-- token gives, so that a tab presenting it moments later gets the same
-- successor and a copy of the database reveals no usable token.
ALTER TABLE refresh_tokens ADD COLUMN successor_hash BLOB;
ALTER TABLE refresh_tokens ADD COLUMN successor_sealed BLOB;
