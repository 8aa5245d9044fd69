"""FastAPI dependencies that accept authgate access tokens (see the README)."""

import os

import jwt
from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

AUTHGATE_URL = os.environ.get("AUTHGATE_URL", "http://127.0.0.1:8010").rstrip("/")
ISSUER = os.environ.get("AUTHGATE_ISSUER", AUTHGATE_URL)
AUDIENCE = os.environ.get("AUTHGATE_AUDIENCE", "authgate")

# Keeps the key set 5 minutes; a token with an unknown kid makes it refetch.
jwks = jwt.PyJWKClient(f"{AUTHGATE_URL}/.well-known/jwks.json", cache_keys=True, lifespan=300)
bearer = HTTPBearer(auto_error=False)


def authenticated(cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> dict:
    """The claims of the request's verified access token; 401 otherwise."""
    try:
        token = cred.credentials if cred else ""
        if jwt.get_unverified_header(token).get("typ") != "at+jwt":
            raise jwt.InvalidTokenError("not an access token")
        key = jwks.get_signing_key_from_jwt(token)  # a PyJWK: it pins the algorithm
        return jwt.decode(token, key, algorithms=["EdDSA", "ES256", "RS256"],
                          audience=AUDIENCE, issuer=ISSUER,
                          options={"require": ["exp", "iat", "sub"]})
    except jwt.PyJWTError:  # a bad token, an unknown kid, an unreachable key set
        raise HTTPException(401, "invalid token", {"WWW-Authenticate": "Bearer"})


def require_role(role: str):
    """Like `authenticated`, and 403 unless the token has `role`."""
    def check(claims: dict = Depends(authenticated)) -> dict:
        if role not in claims.get("roles", []):
            raise HTTPException(403, f"the {role} role is required")
        return claims
    return check
