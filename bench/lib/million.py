#!/usr/bin/env python3
"""The data of the "million accounts" benchmark (bench/run.sh --million).

  million.py load --backend sqlite|postgres --database PATH|URL --accounts N
                  --hash-of USERNAME --run RUN --out DIR
      Loads N accounts straight through SQL, each with one live session (and
      its unused refresh token) and one session that expired days ago (and
      its expired, unused refresh token): N users, 2N sessions, 2N refresh
      tokens. Every account gets the password hash of the existing account
      USERNAME (one real argon2id hash, made by the service). Rows are shaped
      as the service writes them: UUIDv7 ids from their creation time,
      lowercase normalized names, roles `user` (`admin,user` for one account
      in 10,000), timestamps as timestamptz (PostgreSQL) or milliseconds
      (SQLite), refresh tokens as the SHA-256 of a 43-character base64url
      token. PostgreSQL runs generate_series through psql and is then
      vacuumed and analysed, as autovacuum would, and checkpointed, so that
      the scenarios do not run while the load is still being written to
      disk (BENCH_MILLION_SETTLE=0 skips the checkpoint); SQLite gets no
      ANALYZE, since the service never runs one, and a WAL checkpoint.
      Writes to DIR: million_users.txt (usernames to log in),
      million_refresh.txt and million_purge_refresh.txt (live refresh tokens,
      two disjoint sets), million_queries.txt (admin search queries); prints
      one JSON line of timings.

  million.py tokens --port PORT --users FILE --password PW --out FILE
      Logs each user of FILE in once and writes the access tokens.

  million.py admin-token --port PORT --email EMAIL --password PW
      Logs the admin in and prints the access token.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import seed  # noqa: E402  (its POST helper)

DAY_MS = 86_400_000
ADMIN_EVERY = 10_000
# Tokens handed to the refresh scenario and to the purge scenario's slices.
REFRESH_SAMPLE = 1_024
PURGE_REFRESH_SAMPLE = 16_384
LOGIN_SAMPLE = 256
QUERY_SAMPLE = 256


def username(i):
    return f"m{i:07d}"


def token(salt):
    """A refresh token as the service issues them: 32 bytes, base64url."""
    digest = hashlib.sha256(salt.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def token_hash(tok):
    return hashlib.sha256(tok.encode()).digest()


def uuid7(ms):
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw)


class Plan:
    """Where each row of account i sits in time."""

    def __init__(self, n, now_ms):
        self.n, self.now = n, now_ms

    def user_ms(self, i):  # accounts created over the last two years
        return self.now - 730 * DAY_MS + i * (730 * DAY_MS // self.n)

    def live_ms(self, i):  # live sessions opened over the last six days
        return self.now - 6 * DAY_MS + i * (6 * DAY_MS // self.n)

    def expired_ms(self, i):  # expired sessions: opened 59 to 31 days ago
        return self.now - 59 * DAY_MS + i * (28 * DAY_MS // self.n)


PG_FUNCTIONS = r"""
CREATE FUNCTION pg_temp.uuid7(ms bigint, salt text) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3)
            || substr('89ab', get_byte(decode(substr(h, 4, 2), 'hex'), 0) % 4 + 1, 1)
            || substr(h, 6, 15))::uuid
    FROM (SELECT md5(salt) AS h) x
$$;
CREATE FUNCTION pg_temp.token(salt text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT rtrim(translate(encode(sha256(convert_to(salt, 'UTF8')), 'base64'), '+/', '-_'), '=')
$$;
CREATE FUNCTION pg_temp.ts(ms bigint) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$ SELECT to_timestamp(ms / 1000.0) $$;
"""

# :n accounts, :now (ms), :run (salt), :hash. Every id is computed from the
# account number, so each statement finds the rows of the one before.
PG_STEPS = [
    ("users", r"""
INSERT INTO users (id, username, username_normalized, email, email_normalized,
                   email_verified, password_hash, roles, is_active, created_at, updated_at)
SELECT pg_temp.uuid7(ms, :'run' || 'u' || i), name, name,
       name || '@million.example.com', name || '@million.example.com',
       i % 2 = 0, :'hash',
       CASE WHEN i % 10000 = 0 THEN 'admin,user' ELSE 'user' END, TRUE,
       pg_temp.ts(ms), pg_temp.ts(ms)
FROM (SELECT i, 'm' || lpad(i::text, 7, '0') AS name,
             :now::bigint - 730 * 86400000::bigint + i * (730 * 86400000::bigint / :n) AS ms
      FROM generate_series(0::bigint, :n - 1) AS i) g;
"""),
    ("expired_sessions", r"""
INSERT INTO sessions (id, user_id, created_at, expires_at, user_agent, ip)
SELECT pg_temp.uuid7(ms, :'run' || 'e' || i),
       pg_temp.uuid7(:now::bigint - 730 * 86400000::bigint + i * (730 * 86400000::bigint / :n),
                     :'run' || 'u' || i),
       pg_temp.ts(ms), pg_temp.ts(ms + 30 * 86400000::bigint), 'bench-million', '127.0.0.1'
FROM (SELECT i, :now::bigint - 59 * 86400000::bigint + i * (28 * 86400000::bigint / :n) AS ms
      FROM generate_series(0::bigint, :n - 1) AS i) g;
"""),
    ("expired_refresh_tokens", r"""
INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)
SELECT sha256(convert_to(:'run' || 'et' || i, 'UTF8')), pg_temp.uuid7(ms, :'run' || 'e' || i),
       pg_temp.ts(ms), pg_temp.ts(ms + 7 * 86400000::bigint)
FROM (SELECT i, :now::bigint - 59 * 86400000::bigint + i * (28 * 86400000::bigint / :n) AS ms
      FROM generate_series(0::bigint, :n - 1) AS i) g;
"""),
    ("live_sessions", r"""
INSERT INTO sessions (id, user_id, created_at, expires_at, user_agent, ip)
SELECT pg_temp.uuid7(ms, :'run' || 'l' || i),
       pg_temp.uuid7(:now::bigint - 730 * 86400000::bigint + i * (730 * 86400000::bigint / :n),
                     :'run' || 'u' || i),
       pg_temp.ts(ms), pg_temp.ts(ms + 30 * 86400000::bigint), 'bench-million', '127.0.0.1'
FROM (SELECT i, :now::bigint - 6 * 86400000::bigint + i * (6 * 86400000::bigint / :n) AS ms
      FROM generate_series(0::bigint, :n - 1) AS i) g;
"""),
    ("live_refresh_tokens", r"""
INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at)
SELECT sha256(convert_to(pg_temp.token(:'run' || 'lt' || i), 'UTF8')),
       pg_temp.uuid7(ms, :'run' || 'l' || i),
       pg_temp.ts(ms), pg_temp.ts(ms + 7 * 86400000::bigint)
FROM (SELECT i, :now::bigint - 6 * 86400000::bigint + i * (6 * 86400000::bigint / :n) AS ms
      FROM generate_series(0::bigint, :n - 1) AS i) g;
"""),
    ("vacuum_analyze", "VACUUM ANALYZE users, sessions, refresh_tokens;"),
    # Why: the load leaves hundreds of megabytes written but not yet on
    # disk, which the kernel writes back about 30 s later
    # (vm.dirty_expire_centisecs) in bursts that make every commit's WAL
    # flush wait: refresh, the scenario that commits, then measured that
    # write-back rather than the data (BENCHMARKS.md). A database that has
    # held its rows for a while has none of it; the SQLite load ends with
    # its WAL checkpoint likewise.
    ("checkpoint", "CHECKPOINT;"),
]


def psql(url, script, variables):
    args = ["psql", url, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    for k, v in variables.items():
        args += ["-v", f"{k}={v}"]
    subprocess.run(args, input=script, text=True, check=True, stdout=subprocess.DEVNULL)


def psql_value(url, sql):
    out = subprocess.run(["psql", url, "-X", "-tAc", sql], text=True, check=True,
                         capture_output=True).stdout
    return out.strip()


def load_postgres(url, n, run, hash_, now):
    timings = {}
    variables = {"n": n, "now": now, "run": run, "hash": hash_}
    for name, sql in PG_STEPS:
        if name == "checkpoint" and os.environ.get("BENCH_MILLION_SETTLE", "1") == "0":
            continue
        started = time.monotonic()
        script = sql if name in ("vacuum_analyze", "checkpoint") else PG_FUNCTIONS + sql
        psql(url, script, variables)
        timings[name] = round(time.monotonic() - started, 1)
    return timings


def load_sqlite(path, n, run, hash_, now):
    plan = Plan(n, now)
    timings = {}
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA foreign_keys = ON")
    con.execute("PRAGMA synchronous = OFF")
    con.execute("PRAGMA cache_size = -1048576")
    user_ids = []

    def chunks(rows, size=50_000):
        batch = []
        for r in rows:
            batch.append(r)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    def step(name, sql, rows):
        started = time.monotonic()
        con.execute("BEGIN")
        for batch in chunks(rows):
            con.executemany(sql, batch)
        con.execute("COMMIT")
        timings[name] = round(time.monotonic() - started, 1)

    def users():
        for i in range(n):
            ms = plan.user_ms(i)
            uid = uuid7(ms)
            user_ids.append(uid)
            name = username(i)
            email = name + "@million.example.com"
            roles = "admin,user" if i % ADMIN_EVERY == 0 else "user"
            yield (uid, name, name, email, email, int(i % 2 == 0), hash_, roles, 1, ms, ms)

    step("users", "INSERT INTO users (id, username, username_normalized, email, email_normalized, "
         "email_verified, password_hash, roles, is_active, created_at, updated_at) "
         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", users())

    session_sql = ("INSERT INTO sessions (id, user_id, created_at, expires_at, user_agent, ip) "
                   "VALUES (?, ?, ?, ?, 'bench-million', '127.0.0.1')")
    token_sql = ("INSERT INTO refresh_tokens (token_hash, session_id, created_at, expires_at) "
                 "VALUES (?, ?, ?, ?)")
    expired_ids, live_ids = [], []

    def sessions(ms_of, ids):
        for i in range(n):
            ms = ms_of(i)
            sid = uuid7(ms)
            ids.append(sid)
            yield (sid, user_ids[i], ms, ms + 30 * DAY_MS)

    step("expired_sessions", session_sql, sessions(plan.expired_ms, expired_ids))
    step("expired_refresh_tokens", token_sql,
         ((hashlib.sha256(f"{run}et{i}".encode()).digest(), expired_ids[i],
           plan.expired_ms(i), plan.expired_ms(i) + 7 * DAY_MS) for i in range(n)))
    step("live_sessions", session_sql, sessions(plan.live_ms, live_ids))
    step("live_refresh_tokens", token_sql,
         ((token_hash(token(f"{run}lt{i}")), live_ids[i],
           plan.live_ms(i), plan.live_ms(i) + 7 * DAY_MS) for i in range(n)))
    started = time.monotonic()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    timings["checkpoint"] = round(time.monotonic() - started, 1)
    con.close()
    return timings


def password_hash(backend, database, name):
    if backend == "postgres":
        safe = name.replace("'", "''")
        return psql_value(database, f"SELECT password_hash FROM users "
                                    f"WHERE username_normalized = '{safe}'")
    con = sqlite3.connect(database)
    row = con.execute("SELECT password_hash FROM users WHERE username_normalized = ?",
                      (name,)).fetchone()
    con.close()
    return row[0] if row else ""


def write_lines(path, lines):
    with open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


def cmd_load(a):
    hash_ = password_hash(a.backend, a.database, a.hash_of)
    if not hash_.startswith("$argon2"):
        raise RuntimeError(f"no argon2 hash for {a.hash_of!r}: {hash_[:40]!r}")
    now = int(time.time() * 1000)
    started = time.monotonic()
    if a.backend == "postgres":
        timings = load_postgres(a.database, a.accounts, a.run, hash_, now)
    else:
        timings = load_sqlite(a.database, a.accounts, a.run, hash_, now)
    total = time.monotonic() - started

    # Samples spread over the whole table, disjoint where tokens are used up.
    rng = random.Random(a.run)
    picked = rng.sample(range(a.accounts), min(a.accounts, REFRESH_SAMPLE + PURGE_REFRESH_SAMPLE))
    write_lines(f"{a.out}/million_refresh.txt",
                [token(f"{a.run}lt{i}") for i in picked[:REFRESH_SAMPLE]])
    write_lines(f"{a.out}/million_purge_refresh.txt",
                [token(f"{a.run}lt{i}") for i in picked[REFRESH_SAMPLE:]])
    write_lines(f"{a.out}/million_users.txt",
                [username(i) for i in rng.sample(range(a.accounts), min(a.accounts, LOGIN_SAMPLE))])
    # A prefix a tenth of an account number long matches ten accounts.
    write_lines(f"{a.out}/million_queries.txt",
                [f"q={username(i)[:-1]}"
                 for i in rng.sample(range(a.accounts), min(a.accounts, QUERY_SAMPLE))])
    print(json.dumps({
        "accounts": a.accounts,
        "live_sessions": a.accounts,
        "expired_sessions": a.accounts,
        "refresh_tokens": 2 * a.accounts,
        "admins": (a.accounts + ADMIN_EVERY - 1) // ADMIN_EVERY,
        "load_seconds": round(total, 1),
        "steps_seconds": timings,
    }))


def cmd_tokens(a):
    with open(a.users) as f:
        names = [line.strip() for line in f if line.strip()]
    tokens = []
    for name in names:
        r = seed.post(a.host, a.port, "/auth/login", {"username": name, "password": a.password}, 200)
        tokens.append(r["access_token"])
    write_lines(a.out, tokens)


def cmd_admin_token(a):
    r = seed.post(a.host, a.port, "/auth/login", {"email": a.email, "password": a.password}, 200)
    print(r["access_token"])


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    load = sub.add_parser("load")
    load.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    load.add_argument("--database", required=True)
    load.add_argument("--accounts", type=int, required=True)
    load.add_argument("--hash-of", required=True)
    load.add_argument("--run", required=True)
    load.add_argument("--out", required=True)
    tokens = sub.add_parser("tokens")
    tokens.add_argument("--host", default="127.0.0.1")
    tokens.add_argument("--port", type=int, required=True)
    tokens.add_argument("--users", required=True)
    tokens.add_argument("--password", required=True)
    tokens.add_argument("--out", required=True)
    admin = sub.add_parser("admin-token")
    admin.add_argument("--host", default="127.0.0.1")
    admin.add_argument("--port", type=int, required=True)
    admin.add_argument("--email", required=True)
    admin.add_argument("--password", required=True)
    a = p.parse_args()
    {"load": cmd_load, "tokens": cmd_tokens, "admin-token": cmd_admin_token}[a.cmd](a)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - one line for the shell
        print(f"million: {e}", file=sys.stderr)
        sys.exit(1)
