"""A tiny service that trusts authgate's access tokens.

    AUTHGATE_URL=http://127.0.0.1:8010 uvicorn app:app --port 8020
"""

from fastapi import Depends, FastAPI

from authgate_auth import authenticated, require_role

app = FastAPI(title="authgate verifier example")


@app.get("/whoami")
def whoami(claims: dict = Depends(authenticated)) -> dict:
    return {"sub": claims["sub"], "roles": claims.get("roles", [])}


@app.get("/admin/report")
def admin_report(claims: dict = Depends(require_role("admin"))) -> dict:
    return {"ok": True, "admin": claims["sub"]}
