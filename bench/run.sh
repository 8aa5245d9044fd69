#!/usr/bin/env bash
# authgate benchmark harness.
#
#   bench/run.sh [--postgres URL] [--smoke] [--million] [--duration SECS]
#
# Builds the release binary, starts it on a fresh database (a temporary SQLite
# file, or with --postgres a new database authgate_bench_<random> on that
# server, dropped at the end), measures start-up, idle memory and binary size,
# seeds accounts, then drives each scenario with wrk for SECS seconds (6 by
# default; --smoke: 2 s and a fraction of the users and connections):
#
#   healthz      GET /healthz, the HTTP floor
#   me           GET /users/me with valid access tokens
#   login        POST /auth/login over the seeded accounts
#   signup       POST /auth/signup, a new account per request
#   refresh      POST /auth/refresh, every connection chaining its own tokens
#   storm_me     GET /users/me again, while 200 concurrent logins run (storm_login)
#   hash         `authgate hash-benchmark`: the raw argon2id rate on all cores
#   rss_storm    1,000 concurrent logins: peak RSS and how many get 503
#
# --million: does cost grow with the data? On the seeded database it runs
# healthz, me, login, refresh and two admin searches (GET /admin/users with
# `q`, the start of a username, and with `role=admin`); then loads 1,000,000
# accounts, 1,000,000 live sessions and 1,000,000 expired ones (with their
# refresh tokens) straight through SQL (bench/lib/million.py; every account
# shares one argon2 hash made by the service), and runs the same scenarios
# again; then restarts the server so that its purge of the 1,000,000 expired
# sessions and tokens starts a few seconds later, and drives /users/me and
# refresh in 1 s slices from before until after it. The report compares the
# two sizes (p99 within 1.5x) and the p99 during the purge (<= 20 ms).
# Details: bench/lib/million.sh.
#
# Results go to bench/results/<UTC time>.json (with "-smoke" for --smoke runs,
# "-million" for --million runs),
# with a table and the target checks on standard output. Any failed request
# (non-2xx, socket error or timeout), except the 503s expected in the
# 1,000-login storm, makes the run invalid: it is reported loudly and the
# script exits 1. Missed performance targets are reported as FAIL but do not
# change the exit status.
#
# Environment knobs (optional):
#   BENCH_HASH_QUEUE  AUTHGATE_HASH_QUEUE of the server under test ("default",
#                     the default, keeps authgate's own)
#   BENCH_KEEP=1      keep the work directory (server log, wrk outputs)
#   BENCH_NO_BUILD=1  run the release binary already built, without cargo
#   BENCH_BIN         the binary to run (default target/release/authgate);
#                     with BENCH_NO_BUILD=1, A/B runs alternate two builds
#   BENCH_SPREAD_CLIENTS=1
#                     refreshes come from 65,536 client addresses (through
#                     X-Forwarded-For from a trusted proxy) under the default
#                     per-IP refresh quota, so each one is checked by the
#                     limiter, as many clients of a real deployment are
#   BENCH_JWT_ALG     AUTHGATE_JWT_ALG of the server under test (EdDSA, ES256,
#                     RS256, HS256; default: authgate's own, EdDSA)
#   BENCH_MILLION_ACCOUNTS
#                     accounts --million loads (default 1000000)
#   BENCH_MILLION_SETTLE=0
#                     --million on PostgreSQL: skip the CHECKPOINT that ends the
#                     load, so the scenarios run while the kernel is still
#                     writing the loaded rows to disk
#   BENCH_PURGE_AT    --million: seconds from the last restart to the purge (8)
#   BENCH_PURGE_TIMEOUT
#                     --million: give up waiting for the purge after this many
#                     seconds (900)
#   BENCH_PURGE_ME_CONNECTIONS, BENCH_PURGE_REFRESH_CONNECTIONS
#                     --million: connections driving /users/me and refresh
#                     during the purge (half the scenarios' own by default,
#                     which saturates two cores; a few measure latency at a
#                     load the machine is not queueing)

set -Eeuo pipefail
trap 'echo "bench: error: line $LINENO: $BASH_COMMAND failed" >&2' ERR

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
BIN=${BENCH_BIN:-$ROOT/target/release/authgate}

usage() {
    sed -n '2,/^set -Eeuo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

die() {
    echo "bench: error: $*" >&2
    exit 2
}

POSTGRES_URL=""
SMOKE=false
MILLION=false
DURATION=""
while (($#)); do
    case $1 in
        --postgres) (($# >= 2)) || die "--postgres needs a URL"; POSTGRES_URL=$2; shift 2 ;;
        --postgres=*) POSTGRES_URL=${1#*=}; shift ;;
        --smoke) SMOKE=true; shift ;;
        --million) MILLION=true; shift ;;
        --duration) (($# >= 2)) || die "--duration needs a number of seconds"; DURATION=$2; shift 2 ;;
        --duration=*) DURATION=${1#*=}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
if [[ -n $DURATION && ! $DURATION =~ ^[1-9][0-9]*$ ]]; then
    die "--duration takes a whole number of seconds, not '$DURATION'"
fi

# Sizes. The refresh scenario needs more seeded sessions per wrk thread than
# the thread has connections (checked below).
if $SMOKE; then
    DURATION=${DURATION:-2}
    USERS=8
    C_HEALTHZ=8 C_ME=8 C_LOGIN=4 C_SIGNUP=4 C_REFRESH=4
    C_STORM=20 C_RSS=50 RSS_SECS=2 C_ADMIN=2
else
    DURATION=${DURATION:-6}
    USERS=64
    C_HEALTHZ=64 C_ME=64 C_LOGIN=16 C_SIGNUP=16 C_REFRESH=16
    C_STORM=200 C_RSS=1000 RSS_SECS=5 C_ADMIN=8
fi
NPROC=$(nproc)
THREADS=$NPROC # wrk threads (capped by each scenario's connections)
HASH_QUEUE=${BENCH_HASH_QUEUE:-default}
PASSWORD="bench passphrase 2026"

# ---------------------------------------------------------------- 1. build
if [[ ${BENCH_NO_BUILD:-} == 1 ]]; then
    echo "==> using the existing $BIN (BENCH_NO_BUILD=1)"
else
    echo "==> cargo build --release"
    (cd "$ROOT" && cargo build --release)
fi
[[ -x $BIN ]] || die "no binary at $BIN after the build"

if ! command -v wrk >/dev/null; then
    echo "==> installing wrk"
    apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
fi
for tool in wrk curl python3 awk; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
if [[ -n $POSTGRES_URL ]]; then
    command -v psql >/dev/null || die "psql is required for --postgres"
fi

# 1,000 client connections plus as many server sockets in one process each.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < C_RSS + 200)); then
    die "open file limit $(ulimit -n) is too low for $C_RSS connections"
fi

# ------------------------------------------------------------- set-up/clean
WORK=$(mktemp -d /tmp/authgate-bench.XXXXXX)
SERVER_PID=""
STORM_PID=""
PG_DB=""

stop_pid() { # PID: TERM, then KILL after 5 s
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    [[ -n $STORM_PID ]] && stop_pid "$STORM_PID"
    [[ -n $SERVER_PID ]] && stop_pid "$SERVER_PID"
    if ((status != 0)) && [[ -s $WORK/server.log ]]; then
        echo "---- last lines of the server log (without its per-503 lines) ----" >&2
        grep -v 'tower_http::trace::on_failure' "$WORK/server.log" | tail -n 20 >&2 || true
    fi
    if [[ -n $PG_DB ]]; then
        psql "$POSTGRES_URL" -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 ||
            echo "bench: warning: could not drop database $PG_DB" >&2
    fi
    if [[ ${BENCH_KEEP:-} == 1 ]]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

META=$WORK/meta.tsv
ROWS=$WORK/scenarios.tsv
: >"$META"
: >"$ROWS"
meta() { printf '%s\t%s\n' "$1" "$2" >>"$META"; }

SUFFIX=""
if $MILLION; then SUFFIX=-million; fi
if $SMOKE; then SUFFIX=$SUFFIX-smoke; fi
RESULT=$BENCH/results/$(date -u +%Y-%m-%dT%H-%M-%SZ)$SUFFIX.json

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
RUN_ID=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')

if [[ -n $POSTGRES_URL ]]; then
    BACKEND=postgres
    PG_DB=authgate_bench_$RUN_ID
    psql "$POSTGRES_URL" -v ON_ERROR_STOP=1 -qc "CREATE DATABASE $PG_DB" >/dev/null ||
        { PG_DB=""; die "cannot create a database on $POSTGRES_URL"; }
    DATABASE_URL=$(python3 - "$POSTGRES_URL" "$PG_DB" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))
PY
)
    meta database.server_version "$(psql "$POSTGRES_URL" -tAc 'SHOW server_version')"
else
    BACKEND=sqlite
    DATABASE_URL="sqlite://$WORK/authgate.db?mode=rwc"
fi

# The server's settings. All load comes from one IP, so the per-IP limits are
# lifted; so is the per-account back-off, which counts logins while they are
# in flight (the storms run hundreds of logins of a few accounts at once). Logs are JSON, warnings only, plus the start-up line that carries
# elapsed_ms.
export DATABASE_URL
export AUTHGATE_LISTEN=127.0.0.1:$PORT
export AUTHGATE_SIGNUP_PER_MINUTE=100000000
export AUTHGATE_REFRESH_PER_MINUTE=100000000
export AUTHGATE_LOGIN_PER_MINUTE=100000000
export AUTHGATE_LOGIN_ACCOUNT_PER_MINUTE=100000000
export AUTHGATE_LOGIN_IP_FREE_FAILURES=100000000
export AUTHGATE_LOGIN_FREE_FAILURES=100000000
export AUTHGATE_HASH_QUEUE_PER_CLIENT=100000
# Every load generator connection comes from 127.0.0.1.
export AUTHGATE_MAX_CONNECTIONS_PER_IP=100000
export AUTHGATE_LOG_FORMAT=json
# Signups mail a verification link: into the run's own directory.
export AUTHGATE_MAIL_OUTBOX=$WORK/outbox
export RUST_LOG=warn,authgate::cli=info
if [[ $HASH_QUEUE != default ]]; then
    export AUTHGATE_HASH_QUEUE=$HASH_QUEUE
fi
if [[ -n ${BENCH_JWT_ALG:-} ]]; then
    export AUTHGATE_JWT_ALG=$BENCH_JWT_ALG
fi
if $MILLION; then
    # The admin of the admin searches, created at start-up.
    export AUTHGATE_ADMIN_EMAIL=admin@bench.example.com
    export AUTHGATE_ADMIN_PASSWORD=$PASSWORD
    # No purge during the scenarios: the expired rows are part of the data.
    export AUTHGATE_PURGE_INTERVAL=1d
fi
if [[ ${BENCH_SPREAD_CLIENTS:-} == 1 ]]; then
    export AUTHGATE_TRUSTED_PROXIES=127.0.0.1/32
    export AUTHGATE_REFRESH_PER_MINUTE=600
    export BENCH_SPREAD_CLIENTS
fi

# Machine and run description.
meta timestamp "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta smoke "$SMOKE"
meta bench.million "$MILLION"
meta backend "$BACKEND"
meta database.url "$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(netloc=p.netloc.split("@")[-1])) if "@" in p.netloc else sys.argv[1])' "$DATABASE_URL")"
meta seconds_per_scenario "$DURATION"
meta commit "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
meta dirty "$([[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && echo true || echo false)"
meta machine.nproc "$NPROC"
meta machine.cpu_model "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
meta machine.kernel "$(uname -sr)"
meta machine.mem_total_kib "$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
meta machine.loadavg_at_start "$(cut -d' ' -f1-3 /proc/loadavg)"
meta wrk_version "$({ wrk -v 2>&1 || true; } | awk 'NR == 1 {print $2}')"
meta clk_tck "$(getconf CLK_TCK)"
meta server.hash_workers "${AUTHGATE_HASH_WORKERS:-$NPROC}"
meta server.hash_queue "${AUTHGATE_HASH_QUEUE:-256}"
meta server.rust_log "$RUST_LOG"
meta server.jwt_alg "${AUTHGATE_JWT_ALG:-EdDSA}"
meta server.rate_limit_store "${AUTHGATE_RATE_LIMIT_STORE:-auto}"
meta bench.spread_clients "${BENCH_SPREAD_CLIENTS:-0}"
meta binary_bytes "$(stat -c %s "$BIN")"

# ---------------------------------------------------------------- 2. start
server_status() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$SERVER_PID/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
minor_faults() { awk '{print $10}' "/proc/$SERVER_PID/stat"; }
reset_peak_rss() { echo 5 >"/proc/$SERVER_PID/clear_refs"; }

# Waits until the server has used < 10% of a core for two 250 ms intervals in
# a row, e.g. until the hashing queue of a login storm has drained.
wait_idle() {
    local deadline=$((SECONDS + 90)) prev now quiet=0
    prev=$(cpu_ticks)
    while ((SECONDS < deadline)); do
        sleep 0.25
        now=$(cpu_ticks)
        if ((now - prev <= 2)); then
            ((++quiet >= 2)) && return 0
        else
            quiet=0
        fi
        prev=$now
    done
    echo "bench: warning: authgate still busy after 90 s" >&2
}

echo "==> starting authgate ($BACKEND) on $BASE"
t0=${EPOCHREALTIME/./}
"$BIN" serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
until curl -sf -o /dev/null --max-time 1 "$BASE/healthz"; do
    kill -0 "$SERVER_PID" 2>/dev/null || { SERVER_PID=""; die "authgate exited during start-up"; }
    ((${EPOCHREALTIME/./} - t0 < 30000000)) || die "authgate not ready after 30 s"
    sleep 0.005
done
t1=${EPOCHREALTIME/./}
READY_WALL_MS=$(awk -v us=$((t1 - t0)) 'BEGIN {printf "%.1f", us / 1000}')
READY_INPROC_MS=$(grep -m1 -oE '"?elapsed_ms"?[=:] ?[0-9]+' "$WORK/server.log" | grep -oE '[0-9]+$' || echo "")
sleep 1
IDLE_RSS_KIB=$(server_status VmRSS)
meta startup.ready_wall_ms "$READY_WALL_MS"
meta startup.ready_inproc_ms "${READY_INPROC_MS:-null}"
meta idle_rss_kib "$IDLE_RSS_KIB"
echo "    ready in $READY_WALL_MS ms (in-process ${READY_INPROC_MS:-?} ms), idle RSS $((IDLE_RSS_KIB / 1024)) MiB"

# ----------------------------------------------------------------- 3. seed
echo "==> seeding $USERS accounts and $((2 * USERS)) sessions"
SEED=$(python3 "$BENCH/lib/seed.py" --port "$PORT" --count "$USERS" --prefix "b$RUN_ID" \
    --password "$PASSWORD" --parallel 8 --out "$WORK") || die "seeding failed"
echo "    $SEED"
python3 -c 'import json, sys; [print(f"seed.{k}\t{v}") for k, v in json.loads(sys.argv[1]).items()]' "$SEED" >>"$META"

export BENCH_TOKENS=$WORK/tokens.txt
export BENCH_USERS=$WORK/users.txt
export BENCH_REFRESH_TOKENS=$WORK/refresh.txt
export BENCH_PASSWORD=$PASSWORD
export BENCH_PREFIX=s$RUN_ID

# ------------------------------------------------------------- 4. scenarios
threads_for() { echo $(($1 < THREADS ? $1 : THREADS)); }

# NAME KIND CONNS THREADS SECS PEAK_RSS_KIB SERVER_CPU_TICKS SERVER_MINOR_FAULTS OUTPUT
row() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$ROWS"
}

progress() { # NAME OUTPUT
    local line
    line=$(grep -m1 '^BENCH_RESULT ' "$2" | cut -d' ' -f2- || true)
    if [[ -z $line ]]; then
        echo "    $1: no result from wrk: $(tail -n 3 "$2" | tr '\n' ' ')"
        return
    fi
    python3 - "$1" "$line" <<'PY'
import json, sys
name, r = sys.argv[1], json.loads(sys.argv[2])
rps = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0
lat = r["latency_us"]
print(f"    {name}: {rps:.1f} req/s, p50 {lat['p50'] / 1000:.2f} ms,"
      f" p99 {lat['p99'] / 1000:.2f} ms, statuses {r['statuses']}")
PY
}

# NAME KIND CONNS SECS SCRIPT
run_wrk() {
    local name=$1 kind=$2 conns=$3 secs=$4 script=$5 threads out ticks faults
    threads=$(threads_for "$conns")
    out=$WORK/$name.out
    wait_idle
    reset_peak_rss
    ticks=$(cpu_ticks) faults=$(minor_faults)
    BENCH_THREADS=$threads wrk -t"$threads" -c"$conns" -d"${secs}s" --timeout 30s \
        -s "$BENCH/$script" "$BASE" >"$out" 2>&1 || true
    row "$name" "$kind" "$conns" "$threads" "$secs" "$(server_status VmHWM)" \
        "$(($(cpu_ticks) - ticks))" "$(($(minor_faults) - faults))" "$out"
    progress "$name" "$out"
}

refresh_threads=$(threads_for "$C_REFRESH")
if ((USERS / refresh_threads < C_REFRESH / refresh_threads + 2)); then
    die "$USERS refresh chains are too few for $C_REFRESH connections on $refresh_threads threads"
fi

if $MILLION; then
    # shellcheck source=lib/million.sh
    source "$BENCH/lib/million.sh"
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        meta failures_list "authgate exited during the run"
        SERVER_PID=""
    fi
    meta machine.loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
    meta server.log_errors "$(cat "$WORK"/server*.log | grep -c '"level":"ERROR"' || true)"
    meta server.first_error "$(cat "$WORK"/server*.log | grep -m1 '"level":"ERROR"' | cut -c1-300 || true)"
    status=0
    python3 "$BENCH/lib/million_report.py" --work "$WORK" --out "$RESULT" || status=$?
    if ((status != 0)); then
        echo "bench: the run had failed requests; see above and $RESULT" >&2
        exit 1
    fi
    exit 0
fi

echo "==> scenarios, $DURATION s each"
run_wrk healthz plain "$C_HEALTHZ" "$DURATION" healthz.lua
run_wrk me plain "$C_ME" "$DURATION" me.lua
run_wrk login plain "$C_LOGIN" "$DURATION" login.lua
run_wrk signup plain "$C_SIGNUP" "$DURATION" signup.lua
run_wrk refresh plain "$C_REFRESH" "$DURATION" refresh.lua

# The login storm runs from before until after the /users/me measurement, so
# that the hashing workers are saturated for the whole of it.
echo "    storm: $C_STORM concurrent logins while /users/me runs"
wait_idle
reset_peak_rss
ticks=$(cpu_ticks) faults=$(minor_faults)
storm_threads=$(threads_for "$C_STORM")
BENCH_THREADS=$storm_threads wrk -t"$storm_threads" -c"$C_STORM" -d"$((DURATION + 3))s" --timeout 30s \
    -s "$BENCH/login.lua" "$BASE" >"$WORK/storm_login.out" 2>&1 &
STORM_PID=$!
sleep 2
me_threads=$(threads_for "$C_ME")
me_ticks=$(cpu_ticks) me_faults=$(minor_faults)
BENCH_THREADS=$me_threads wrk -t"$me_threads" -c"$C_ME" -d"${DURATION}s" --timeout 30s \
    -s "$BENCH/me.lua" "$BASE" >"$WORK/storm_me.out" 2>&1 || true
me_ticks=$(($(cpu_ticks) - me_ticks)) me_faults=$(($(minor_faults) - me_faults))
wait "$STORM_PID" || true
STORM_PID=""
storm_rss=$(server_status VmHWM)
ticks=$(($(cpu_ticks) - ticks)) faults=$(($(minor_faults) - faults))
row storm_me storm "$C_ME" "$me_threads" "$DURATION" "$storm_rss" "$me_ticks" "$me_faults" "$WORK/storm_me.out"
row storm_login storm "$C_STORM" "$storm_threads" "$((DURATION + 3))" "$storm_rss" "$ticks" "$faults" "$WORK/storm_login.out"
progress storm_me "$WORK/storm_me.out"
progress storm_login "$WORK/storm_login.out"

echo "    hash-benchmark --duration ${DURATION}s"
wait_idle
# Its wall-clock and CPU seconds show whether it kept every worker busy.
TIMEFORMAT='%R %U %S'
if { time "$BIN" hash-benchmark --duration "${DURATION}s" >"$WORK/hash.json" 2>"$WORK/hash.err"; } 2>"$WORK/hash.time"; then
    echo "    $(tail -n1 "$WORK/hash.json")"
    read -r hb_wall hb_user hb_sys <"$WORK/hash.time"
    meta hash_benchmark_process.wall_s "$hb_wall"
    meta hash_benchmark_process.cpu_s "$(awk -v u="$hb_user" -v s="$hb_sys" 'BEGIN {printf "%.2f", u + s}')"
else
    echo "    hash-benchmark failed: $(tail -n 2 "$WORK/hash.err" | tr '\n' ' ')"
    : >"$WORK/hash.json"
fi

echo "    RSS storm: $C_RSS concurrent logins for $RSS_SECS s"
run_wrk rss_storm rss_storm "$C_RSS" "$RSS_SECS" login.lua

# --------------------------------------------------------------- 5-7. report
failures=()
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    failures+=("authgate exited during the run")
    SERVER_PID=""
fi
meta machine.loadavg_at_end "$(cut -d' ' -f1-3 /proc/loadavg)"
meta server.log_warnings "$(grep -c '"level":"WARN"' "$WORK/server.log" || true)"
meta server.log_errors "$(grep -c '"level":"ERROR"' "$WORK/server.log" || true)"
meta server.first_error "$(grep -m1 '"level":"ERROR"' "$WORK/server.log" | cut -c1-300 || true)"
meta server.first_warning "$(grep -m1 '"level":"WARN"' "$WORK/server.log" | cut -c1-300 || true)"
if ((${#failures[@]})); then
    meta failures_list "$(IFS='|'; echo "${failures[*]}")"
fi

status=0
python3 "$BENCH/lib/report.py" --work "$WORK" --out "$RESULT" || status=$?
if ((status != 0)); then
    echo "bench: the run had failed requests; see above and $RESULT" >&2
    exit 1
fi
