"""Steers generated requests clear of rules no schema states.

A new password must not be on the bundled list of common passwords, nor be
the account's username or email (NIST SP 800-63B). The API document says so
in words; these hooks keep Schemathesis from sending such passwords as if
they were valid, so a 422 for them is not reported as a contract breach.
The authenticated run also leaves the test's own admin account alone.
"""

import os
import pathlib

import schemathesis

COMMON = frozenset(
    line
    for line in (pathlib.Path(__file__).resolve().parents[2] / "assets" / "common-passwords.txt")
    .read_text(encoding="utf-8")
    .splitlines()
    if line
)

NEW_PASSWORD_FIELDS = ("password", "new_password")


def refused_by_policy(body):
    names = [body.get(k) for k in ("username", "email")]
    names = [n.lower() for n in names if isinstance(n, str)]
    for field in NEW_PASSWORD_FIELDS:
        value = body.get(field)
        if not isinstance(value, str):
            continue
        lowered = value.strip().lower()
        if lowered in COMMON or lowered in names:
            return True
    return False


# The test's own admin account (set by the authenticated run): disabling,
# demoting or deleting it would end the run's credentials.
OWN_ID = os.environ.get("ST_ADMIN_ID")


def ends_own_session(operation, case):
    if not OWN_ID or operation.path != "/admin/users/{id}":
        return False
    if operation.method.upper() not in ("PATCH", "DELETE"):
        return False
    return str((case.path_parameters or {}).get("id", "")).lower() == OWN_ID


def keep(operation, case):
    if operation is not None and ends_own_session(operation, case):
        return False
    body = case.body
    if operation is None or not isinstance(body, dict):
        return True
    if operation.method.upper() == "POST" and operation.path == "/auth/login":
        return True  # logging in checks no policy
    return not refused_by_policy(body)


@schemathesis.hook
def filter_case(context, case):
    return keep(context.operation, case)


@schemathesis.hook
def before_add_examples(context, examples):
    # The examples phase applies no filter: drop its refused cases here.
    examples[:] = [case for case in examples if keep(context.operation, case)]
