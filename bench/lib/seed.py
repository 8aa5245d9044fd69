#!/usr/bin/env python3
"""Seeds accounts for the benchmark and logs them in.

Creates COUNT accounts named PREFIX-u<i> with one password, then logs each in
twice: the first session's access token goes to OUT/tokens.txt (for
/users/me), the second session's refresh token to OUT/refresh.txt (for the
refresh chains), and the usernames to OUT/users.txt. Requests run on a few
keep-alive connections in parallel; any unexpected status aborts the seeding.
"""

import argparse
import http.client
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

local = threading.local()


def connection(host, port):
    conn = getattr(local, "conn", None)
    if conn is None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        local.conn = conn
    return conn


def post(host, port, path, payload, expected):
    body = json.dumps(payload)
    for attempt in range(2):
        conn = connection(host, port)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError):
            # A dropped keep-alive connection: reconnect once.
            conn.close()
            local.conn = None
            if attempt:
                raise
            continue
        if resp.status != expected:
            raise RuntimeError(
                f"POST {path} answered {resp.status} (expected {expected}): {data[:300]!r}"
            )
        return json.loads(data)
    raise RuntimeError("unreachable")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    names = [f"{a.prefix}-u{i}" for i in range(a.count)]
    started = time.monotonic()

    def signup(name):
        post(a.host, a.port, "/auth/signup",
             {"username": name, "email": f"{name}@bench.example.com", "password": a.password},
             201)

    def login(name):
        return post(a.host, a.port, "/auth/login",
                    {"username": name, "password": a.password}, 200)

    with ThreadPoolExecutor(a.parallel) as pool:
        list(pool.map(signup, names))
        signed_up = time.monotonic()
        first = list(pool.map(login, names))
        second = list(pool.map(login, names))

    with open(f"{a.out}/users.txt", "w") as f:
        f.writelines(n + "\n" for n in names)
    with open(f"{a.out}/tokens.txt", "w") as f:
        f.writelines(r["access_token"] + "\n" for r in first)
    with open(f"{a.out}/refresh.txt", "w") as f:
        f.writelines(r["refresh_token"] + "\n" for r in second)

    done = time.monotonic()
    print(json.dumps({
        "accounts": a.count,
        "signup_seconds": round(signed_up - started, 3),
        "login_seconds": round(done - signed_up, 3),
    }))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - one line for the shell
        print(f"seeding failed: {e}", file=sys.stderr)
        sys.exit(1)
