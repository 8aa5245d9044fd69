#!/usr/bin/env python3
"""Checks authgate's access tokens against a running server, two ways:

* through the FastAPI example (examples/verify-fastapi), which must accept a
  live token and refuse a tampered or foreign one, and tell users from admins;
* with plain PyJWT and the published key set, independently of the example.

    check_fastapi.py --url http://127.0.0.1:PORT --alg EdDSA \
        --user-token T --admin-token T --user-sub UUID [--issuer ISS]

Every option also comes from the environment (AUTHGATE_URL, AUTHGATE_ISSUER,
AUTHGATE_AUDIENCE, AUTHGATE_CHECK_ALG, AUTHGATE_CHECK_USER_TOKEN,
AUTHGATE_CHECK_ADMIN_TOKEN, AUTHGATE_CHECK_USER_SUB). Prints one line per
check and exits 1 if any failed, 2 if it could not start.
"""

import argparse
import base64
import json
import os
import sys
import traceback
import warnings
from pathlib import Path

sys.dont_write_bytecode = True  # leave no __pycache__ in the work tree

ALGORITHMS = ("EdDSA", "ES256", "RS256")
KEY_TYPES = {"EdDSA": "OKP", "ES256": "EC", "RS256": "RSA"}


def parse_args():
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=env("AUTHGATE_URL"))
    p.add_argument("--issuer", default=env("AUTHGATE_ISSUER"))
    p.add_argument("--audience", default=env("AUTHGATE_AUDIENCE", "authgate"))
    p.add_argument("--alg", default=env("AUTHGATE_CHECK_ALG"), choices=ALGORITHMS)
    p.add_argument("--user-token", default=env("AUTHGATE_CHECK_USER_TOKEN"))
    p.add_argument("--admin-token", default=env("AUTHGATE_CHECK_ADMIN_TOKEN"))
    p.add_argument("--user-sub", default=env("AUTHGATE_CHECK_USER_SUB"))
    args = p.parse_args()
    missing = [
        name
        for name in ("url", "alg", "user_token", "admin_token", "user_sub")
        if not getattr(args, name)
    ]
    if missing:
        p.error("missing: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    args.url = args.url.rstrip("/")
    args.issuer = args.issuer or args.url
    return args


def b64decode(part):
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def header_of(token):
    return json.loads(b64decode(token.split(".")[0]))


def payload_of(token):
    return json.loads(b64decode(token.split(".")[1]))


def foreign_key(alg):
    """A fresh private key of `alg`'s kind that authgate never published."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Checks:
    def __init__(self):
        self.passed = 0
        self.failed = []

    def run(self, name, check):
        try:
            check()
        except Exception as e:  # a check's failure, whatever it is
            detail = str(e) or type(e).__name__
            if not isinstance(e, AssertionError):
                detail = "".join(traceback.format_exception_only(e)).strip()
            self.failed.append(name)
            print(f"FAIL {name}: {detail}", flush=True)
        else:
            self.passed += 1
            print(f"ok   {name}", flush=True)


def expect(response, status, what):
    assert response.status_code == status, (
        f"{what}: expected {status}, got {response.status_code} {response.text[:200]}"
    )


def main():
    args = parse_args()
    # The example reads its settings when imported.
    os.environ["AUTHGATE_URL"] = args.url
    os.environ["AUTHGATE_ISSUER"] = args.issuer
    os.environ["AUTHGATE_AUDIENCE"] = args.audience
    example = Path(__file__).resolve().parents[2] / "examples" / "verify-fastapi"
    sys.path.insert(0, str(example))
    # Newer Starlette would rather have httpx2 under its test client; httpx works.
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette.testclient`")
    try:
        import jwt
        from fastapi.testclient import TestClient

        from app import app
    except ImportError as e:
        print(f"cannot import the FastAPI example or its dependencies: {e}", file=sys.stderr)
        print(
            "install them: pip install -r examples/verify-fastapi/requirements.txt httpx",
            file=sys.stderr,
        )
        return 2

    client = TestClient(app)
    user, admin, alg = args.user_token, args.admin_token, args.alg
    kid = header_of(user).get("kid")
    checks = Checks()

    def get(path, token=None):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.get(path, headers=headers)

    def refused(token, what):
        res = get("/whoami", token)
        expect(res, 401, what)
        assert res.headers.get("www-authenticate") == "Bearer", (
            f"{what}: WWW-Authenticate is {res.headers.get('www-authenticate')!r}"
        )

    # Through the example.
    def live_token_is_accepted():
        res = get("/whoami", user)
        expect(res, 200, "live user token")
        body = res.json()
        assert body["sub"] == args.user_sub, f"sub {body['sub']!r}, want {args.user_sub!r}"
        assert body["roles"] == payload_of(user).get("roles", []), f"roles {body['roles']!r}"

    def missing_token_is_refused():
        refused(None, "no token")

    def tampered_payload_is_refused():
        head, payload, signature = user.split(".")
        claims = json.loads(b64decode(payload))
        sub = claims["sub"]
        claims["sub"] = sub[:-1] + ("0" if sub[-1] != "0" else "1")  # one character
        forged = ".".join([head, b64encode(json.dumps(claims).encode()), signature])
        assert payload_of(forged)["sub"] != sub
        refused(forged, "payload with one character changed")

    def foreign_key_with_published_kid_is_refused():
        claims = payload_of(user)
        forged = jwt.encode(
            claims, foreign_key(alg), algorithm=alg, headers={"kid": kid, "typ": "at+jwt"}
        )
        refused(forged, f"{alg} token signed by an unpublished key, published kid")

    def foreign_key_with_unknown_kid_is_refused():
        forged = jwt.encode(
            payload_of(user),
            foreign_key(alg),
            algorithm=alg,
            headers={"kid": "not-a-published-kid", "typ": "at+jwt"},
        )
        refused(forged, f"{alg} token signed by an unpublished key, unknown kid")

    def hs256_and_none_are_refused():
        claims = payload_of(user)
        hs = jwt.encode(claims, "x" * 32, algorithm="HS256", headers={"kid": kid, "typ": "at+jwt"})
        refused(hs, "HS256 token with a published kid")
        none = ".".join(
            [b64encode(json.dumps({"alg": "none", "typ": "at+jwt", "kid": kid}).encode()),
             user.split(".")[1], ""]
        )
        refused(none, "alg none")

    def user_is_not_admin():
        expect(get("/admin/report", user), 403, "user token on the admin route")

    def admin_is_admin():
        res = get("/admin/report", admin)
        expect(res, 200, "admin token on the admin route")
        assert res.json()["admin"] == payload_of(admin)["sub"]

    # Independently of the example: plain PyJWT and the published key set.
    def verified_independently(token, who):
        def check():
            header = header_of(token)
            assert header.get("alg") == alg, f"alg {header.get('alg')!r}, want {alg}"
            assert header.get("typ") == "at+jwt", f"typ {header.get('typ')!r}"
            jwks = jwt.PyJWKClient(f"{args.url}/.well-known/jwks.json").fetch_data()
            for jwk in jwks["keys"]:
                private = {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)
                assert not private, f"key {jwk.get('kid')} publishes {sorted(private)}"
            published = [jwk for jwk in jwks["keys"] if jwk.get("kid") == header.get("kid")]
            assert len(published) == 1, f"kid {header.get('kid')!r}: {len(published)} keys"
            jwk = published[0]
            assert jwk.get("alg") == alg, f"published key's alg {jwk.get('alg')!r}"
            assert jwk.get("kty") == KEY_TYPES[alg], f"published key's kty {jwk.get('kty')!r}"
            assert jwk.get("use") == "sig", f"published key's use {jwk.get('use')!r}"
            key = jwt.PyJWK(jwk)
            claims = jwt.decode(
                token,
                key.key,  # the bare public key: the algorithm comes from below
                algorithms=[alg],
                audience=args.audience,
                issuer=args.issuer,
                options={"require": ["exp", "iat", "sub", "jti", "sid"]},
            )
            assert isinstance(claims.get("roles"), list), f"roles {claims.get('roles')!r}"
            assert claims["exp"] > claims["iat"], "exp is not after iat"
            if who == "user":
                assert claims["sub"] == args.user_sub, f"sub {claims['sub']!r}"
            else:
                assert "admin" in claims["roles"], f"admin roles {claims['roles']!r}"

        return check

    for name, check in [
        ("example accepts a live token and returns its sub", live_token_is_accepted),
        ("example refuses a request without a token (401, Bearer)", missing_token_is_refused),
        ("example refuses a token whose payload changed by one character",
         tampered_payload_is_refused),
        (f"example refuses an {alg} token of another key under a published kid",
         foreign_key_with_published_kid_is_refused),
        (f"example refuses an {alg} token of another key under an unknown kid",
         foreign_key_with_unknown_kid_is_refused),
        ("example refuses HS256 and alg none", hs256_and_none_are_refused),
        ("example's admin route refuses a user (403)", user_is_not_admin),
        ("example's admin route accepts an admin", admin_is_admin),
        (f"PyJWT verifies the user token ({alg}) with the published key",
         verified_independently(user, "user")),
        (f"PyJWT verifies the admin token ({alg}) with the published key",
         verified_independently(admin, "admin")),
    ]:
        checks.run(name, check)

    total = checks.passed + len(checks.failed)
    if checks.failed:
        failed = ", ".join(checks.failed)
        print(f"{len(checks.failed)} of {total} verifier checks FAILED: {failed}")
        return 1
    print(f"all {total} verifier checks ok ({alg})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
