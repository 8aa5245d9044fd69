-- Signing keys with a life: published before they sign (standby), signing
-- (active), published until their tokens have expired (retiring), or
-- revoked. The private key is sealed when a key-encryption key is set; the
-- public key is kept as a JWK for publication.
ALTER TABLE signing_keys ADD COLUMN sealed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE signing_keys ADD COLUMN public_jwk TEXT;
ALTER TABLE signing_keys ADD COLUMN activates_at TIMESTAMPTZ;
UPDATE signing_keys SET activates_at = created_at;
ALTER TABLE signing_keys ALTER COLUMN activates_at SET NOT NULL;
ALTER TABLE signing_keys ADD COLUMN revoked_at TIMESTAMPTZ;

