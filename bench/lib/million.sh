# The --million mode of bench/run.sh, sourced by it once the small database
# is seeded. It uses the script's settings (BIN, WORK, BASE, PORT, PASSWORD,
# RUN_ID, DURATION, C_*) and functions (run_wrk, wait_idle, stop_pid, meta).
#
#   1. small:   the scenarios on the seeded database (USERS accounts)
#   2. load:    the server stops; MILLION_ACCOUNTS accounts, as many live
#               sessions and as many expired ones (each with its refresh
#               token) go in straight through SQL (bench/lib/million.py)
#   3. million: the server starts again on them; the same scenarios
#   4. purge:   the server starts again with a purge interval of PURGE_AT
#               seconds; from before the purge until after it, /users/me and
#               refresh run together in 1 s wrk slices, so that the slices
#               during the purge can be told from the others. Each runs on
#               half its scenario's connections: together they load the
#               server about as much as one scenario does.

MILLION_ACCOUNTS=${BENCH_MILLION_ACCOUNTS:-1000000}
PURGE_AT=${BENCH_PURGE_AT:-8}
PURGE_TIMEOUT=${BENCH_PURGE_TIMEOUT:-900}
# Refresh tokens one purge slice uses up (wrk presents each once).
PURGE_SLICE_TOKENS=64

[[ $MILLION_ACCOUNTS =~ ^[1-9][0-9]*$ ]] || die "BENCH_MILLION_ACCOUNTS must be a whole number"

# LOG: starts the server, logging to LOG, and waits until it answers.
start_server() {
    local log=$1
    SERVER_STARTED_US=${EPOCHREALTIME/./}
    "$BIN" serve >>"$log" 2>&1 &
    SERVER_PID=$!
    until curl -sf -o /dev/null --max-time 1 "$BASE/healthz"; do
        kill -0 "$SERVER_PID" 2>/dev/null || { SERVER_PID=""; die "authgate exited during start-up (see $log)"; }
        ((${EPOCHREALTIME/./} - SERVER_STARTED_US < 120000000)) || die "authgate not ready after 120 s"
        sleep 0.005
    done
    SERVER_READY_US=${EPOCHREALTIME/./}
}

stop_server() {
    stop_pid "$SERVER_PID"
    SERVER_PID=""
}

ms_since() { awk -v us=$((${EPOCHREALTIME/./} - $1)) 'BEGIN {printf "%.1f", us / 1000}'; }

admin_token() {
    python3 "$BENCH/lib/million.py" admin-token --port "$PORT" --email "$AUTHGATE_ADMIN_EMAIL" \
        --password "$PASSWORD" >"$WORK/admin_token.txt" || die "the admin could not log in"
    BENCH_ADMIN_TOKEN=$(<"$WORK/admin_token.txt")
    export BENCH_ADMIN_TOKEN
}

# PHASE Q_QUERIES: the scenarios compared between the two sizes. healthz is
# the control: its code does not touch the database.
million_scenarios() {
    local phase=$1 q_queries=$2
    run_wrk "${phase}_healthz" plain "$C_HEALTHZ" "$DURATION" healthz.lua
    run_wrk "${phase}_me" plain "$C_ME" "$DURATION" me.lua
    run_wrk "${phase}_login" plain "$C_LOGIN" "$DURATION" login.lua
    run_wrk "${phase}_refresh" plain "$C_REFRESH" "$DURATION" refresh.lua
    export BENCH_ADMIN_QUERIES=$q_queries
    run_wrk "${phase}_admin_q" plain "$C_ADMIN" "$DURATION" admin.lua
    export BENCH_ADMIN_QUERIES=$WORK/role_queries.txt
    run_wrk "${phase}_admin_role" plain "$C_ADMIN" "$DURATION" admin.lua
}

# ------------------------------------------------------------ 1. small
admin_token
# The role listing answers a full page (50) on both sizes, so that the two
# compare the finding of admins and not the length of the answer: 50 of the
# seeded accounts are admins too (the loaded database holds 101).
PROMOTE="UPDATE users SET roles = 'admin,user' WHERE id IN \
    (SELECT id FROM users WHERE roles = 'user' ORDER BY id LIMIT 50)"
if [[ $BACKEND == postgres ]]; then
    psql -q "$DATABASE_URL" -c "$PROMOTE" || die "the seeded admins could not be made"
else
    python3 -c 'import sqlite3, sys
db = sqlite3.connect(sys.argv[1]); db.execute(sys.argv[2]); db.commit()' \
        "$WORK/authgate.db" "$PROMOTE" || die "the seeded admins could not be made"
fi
echo "role=admin" >"$WORK/role_queries.txt"
for ((i = 0; i < USERS; i++)); do echo "q=b$RUN_ID-u$i"; done >"$WORK/small_queries.txt"
echo "==> small database ($USERS accounts): scenarios, $DURATION s each"
million_scenarios small "$WORK/small_queries.txt"

# ------------------------------------------------------------- 2. load
echo "==> loading $MILLION_ACCOUNTS accounts, $MILLION_ACCOUNTS live and $MILLION_ACCOUNTS expired sessions through SQL"
stop_server
if [[ $BACKEND == postgres ]]; then
    LOAD_DB=$DATABASE_URL
else
    LOAD_DB=$WORK/authgate.db
fi
LOADED=$(python3 "$BENCH/lib/million.py" load --backend "$BACKEND" --database "$LOAD_DB" \
    --accounts "$MILLION_ACCOUNTS" --hash-of "b$RUN_ID-u0" --run "$RUN_ID" --out "$WORK") ||
    die "loading failed"
echo "    $LOADED"
python3 -c 'import json, sys
for k, v in json.loads(sys.argv[1]).items():
    if isinstance(v, dict):
        for k2, v2 in v.items(): print(f"million.load.{k}.{k2}\t{v2}")
    else: print(f"million.load.{k}\t{v}")' "$LOADED" >>"$META"
if [[ $BACKEND == postgres ]]; then
    meta million.database_bytes "$(psql "$DATABASE_URL" -tAc 'SELECT pg_database_size(current_database())')"
else
    meta million.database_bytes "$(stat -c %s "$WORK/authgate.db")"
fi

# ---------------------------------------------------------- 3. million
# No purge while the scenarios run: the expired rows are part of the data.
export AUTHGATE_PURGE_INTERVAL=1d
start_server "$WORK/server.log"
meta million.startup.ready_wall_ms "$(awk -v us=$((SERVER_READY_US - SERVER_STARTED_US)) 'BEGIN {printf "%.1f", us / 1000}')"
head -n "$USERS" "$WORK/million_users.txt" >"$WORK/million_me_users.txt"
python3 "$BENCH/lib/million.py" tokens --port "$PORT" --users "$WORK/million_me_users.txt" \
    --password "$PASSWORD" --out "$WORK/million_tokens.txt" || die "the loaded accounts could not log in"
admin_token
export BENCH_TOKENS=$WORK/million_tokens.txt
export BENCH_USERS=$WORK/million_users.txt
export BENCH_REFRESH_TOKENS=$WORK/million_refresh.txt
echo "==> $MILLION_ACCOUNTS accounts: scenarios, $DURATION s each"
million_scenarios million "$WORK/million_queries.txt"

# ------------------------------------------------------------ 4. purge
echo "==> purge of the expired rows while /users/me and refresh run"
stop_server
split -l "$PURGE_SLICE_TOKENS" -d -a 5 "$WORK/million_purge_refresh.txt" "$WORK/purge_refresh."
PURGE_LOG=$WORK/server-purge.log
: >"$PURGE_LOG"
export AUTHGATE_PURGE_INTERVAL=${PURGE_AT}s
export RUST_LOG="$RUST_LOG,authgate::app=debug"
start_server "$PURGE_LOG"
# The purge task's clock starts while the server starts: its first purge
# begins PURGE_AT s after a moment between these two.
meta purge.server_started_us "$SERVER_STARTED_US"
meta purge.server_ready_us "$SERVER_READY_US"
meta purge.interval_s "$PURGE_AT"
SLICES=$WORK/slices.tsv
: >"$SLICES"
C_PURGE_ME=${BENCH_PURGE_ME_CONNECTIONS:-$((C_ME / 2))}
C_PURGE_REFRESH=${BENCH_PURGE_REFRESH_CONNECTIONS:-$((C_REFRESH / 2))}
meta purge.connections_me "$C_PURGE_ME"
meta purge.connections_refresh "$C_PURGE_REFRESH"
me_threads=$(threads_for "$C_PURGE_ME")
refresh_threads=$(threads_for "$C_PURGE_REFRESH")
after=0 slice=0
while :; do
    chunk=$(printf '%s/purge_refresh.%05d' "$WORK" "$slice")
    if [[ ! -s $chunk ]]; then
        echo "bench: warning: out of refresh tokens after $slice purge slices" >&2
        meta purge.stopped "out of refresh tokens"
        break
    fi
    s0=${EPOCHREALTIME/./}
    BENCH_QUANTILES=1 BENCH_THREADS=$me_threads wrk -t"$me_threads" -c"$C_PURGE_ME" -d1s --timeout 30s \
        -s "$BENCH/me.lua" "$BASE" >"$WORK/slice_me.$slice.out" 2>&1 &
    me_pid=$!
    BENCH_QUANTILES=1 BENCH_THREADS=$refresh_threads BENCH_REFRESH_TOKENS=$chunk \
        wrk -t"$refresh_threads" -c"$C_PURGE_REFRESH" -d1s --timeout 30s \
        -s "$BENCH/refresh.lua" "$BASE" >"$WORK/slice_refresh.$slice.out" 2>&1 || true
    wait "$me_pid" || true
    printf '%s\t%s\t%s\t%s\t%s\n' "$slice" "$s0" "${EPOCHREALTIME/./}" \
        "$WORK/slice_me.$slice.out" "$WORK/slice_refresh.$slice.out" >>"$SLICES"
    slice=$((slice + 1))
    if grep -q 'purged expired sessions and tokens' "$PURGE_LOG"; then
        ((++after >= 3)) && break
    fi
    if ((${EPOCHREALTIME/./} - SERVER_STARTED_US > PURGE_TIMEOUT * 1000000)); then
        echo "bench: warning: the purge did not finish within $PURGE_TIMEOUT s" >&2
        meta purge.stopped "timeout after $PURGE_TIMEOUT s"
        break
    fi
done
grep -m1 'purged expired sessions and tokens' "$PURGE_LOG" >"$WORK/purge_done.json" || true
if [[ $BACKEND == postgres ]]; then
    meta purge.rows_left "$(psql "$DATABASE_URL" -tAc "SELECT (SELECT count(*) FROM sessions WHERE expires_at <= now()) + (SELECT count(*) FROM refresh_tokens WHERE expires_at <= now() AND used_at IS NULL)")"
else
    meta purge.rows_left "$(python3 -c 'import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1]); now = int(time.time() * 1000)
print(con.execute("SELECT (SELECT count(*) FROM sessions WHERE expires_at <= ?) + (SELECT count(*) FROM refresh_tokens WHERE expires_at <= ? AND used_at IS NULL)", (now, now)).fetchone()[0])' "$WORK/authgate.db")"
fi
