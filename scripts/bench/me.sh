#!/usr/bin/env bash
# Load benchmark: GET /v1/me with a bearer access token against GET /healthz on the same server,
# measured in the same run so that the ratio means something on a shared 2-core machine.
#
# One release `portcullis serve` (PORTCULLIS_LOG__LEVEL=warn, SQLite in a fresh data directory); one
# account is signed up and logged in with curl, and its access token is sent on every /v1/me request.
# /v1/me checks the token (signature verified once, then answered from the node's cache of verified
# tokens), checks the session is not revoked, and takes the profile from the node's profile cache,
# reading the user row from SQLite when the cached copy is older than 2 s; /healthz does none of
# that, so the gap between the two is the cost of authentication plus the profile. With one account,
# all but one request in each 2 s are cache hits: a load of many users who each call less often than
# that would pay the SQLite read on most requests (crates/app/benches/tokens.rs, profile_read).
#
# Targets (same server, same wrk settings):
#   me        GET /v1/me, Authorization: Bearer <access token>
#   healthz   GET /healthz
# For each round, each target gets one `wrk -t1 -c32 -d${DURATION}s --latency` run (order rotated per
# round). Per target we report the median requests/s, the median p99 latency and the server's CPU time
# per request (utime+stime from /proc/PID/stat around each run, divided by the requests wrk counted).
#
# Usage: scripts/bench/me.sh            (ROUNDS=5 DURATION=5 CONNECTIONS=32 by default)
# Env:   ROUNDS, DURATION (s), CONNECTIONS, WARMUP (s), PORT (loopback port)
# Out:   a table on stdout and scripts/bench/out/me-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
PORT=${PORT:-18195}
PASSWORD="correct horse battery staple 42"
EMAIL="bench-me@example.com"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

NAMES=(me healthz)

# Bound the whole run (the build excluded): 2 targets x ROUNDS x DURATION, warmups, startup.
bench_budget $(( ROUNDS * ${#NAMES[@]} * (DURATION + 1) + WARMUP * ${#NAMES[@]} + 30 )) "ROUNDS=$ROUNDS DURATION=$DURATION"

# --- tools -----------------------------------------------------------------------------------------
bench_tools curl getconf awk sort python3
bench_build

# --- server ----------------------------------------------------------------------------------------
bench_tmp portcullis-bench-me
BASE="http://127.0.0.1:$PORT"
bench_port_free "$BASE/" "port $PORT is already in use; set PORT"

mkdir -p "$TMP/data"
bench_start "$TMP/server.log" env PORTCULLIS_LOG__LEVEL=warn PORTCULLIS_RATE_LIMITS__ENABLED=false \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/data" --listen "127.0.0.1:$PORT"
SERVER_PID=$BENCH_PID
bench_wait_up "$SERVER_PID" "$BASE/healthz" "the server did not come up on $BASE" "$TMP/server.log"
bench_check_exe "$SERVER_PID" "" "$PORTCULLIS_BIN"

bench_signup "$BASE" "$EMAIL" "$PASSWORD"
status=$(curl -s -o "$TMP/login.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}" "$BASE/v1/auth/login")
TOKEN=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_token"])' "$TMP/login.json" 2>/dev/null || true)
if [[ "$status" != 200 || -z "$TOKEN" ]]; then
    echo "login answered $status: $(cat "$TMP/login.json")" >&2; exit 1
fi
status=$(curl -s -o "$TMP/me.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "$BASE/v1/me")
if [[ "$status" != 200 ]] || ! grep -q "\"email\":\"$EMAIL\"" "$TMP/me.json"; then
    echo "GET /v1/me answered $status: $(cat "$TMP/me.json")" >&2; exit 1
fi
echo "== server up: pid $SERVER_PID; $EMAIL signed up, logged in, /v1/me answers 200" >&2

# --- measurement -----------------------------------------------------------------------------------
# Both targets are the one server.
declare -A PID=([me]=$SERVER_PID [healthz]=$SERVER_PID)
run_wrk() { # name duration -> prints wrk output
    case "$1" in
        me) bench_wrk "$2" -H "Authorization: Bearer $TOKEN" "$BASE/v1/me" ;;
        healthz) bench_wrk "$2" "$BASE/healthz" ;;
    esac
}
# A 401 (say, an expired token) would be a fast answer that is not the thing measured.
bench_wrk_rounds 8 --fail-on-non-2xx

# --- report ----------------------------------------------------------------------------------------
bench_report_file me
{
    echo "# GET /v1/me (bearer token) vs GET /healthz on the same server ($stamp)"
    echo
    bench_wrk_line
    echo "release server, PORTCULLIS_LOG__LEVEL=warn, SQLite; server CPU = utime+stime of the server process per"
    echo "request. Loopback only. $(bench_host)"
    bench_commit_line
    echo
    echo "| target | req/s | p99 (ms) | server CPU (µs/req) | rps vs healthz | CPU/req vs healthz |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | ${M_RPS[$name]} | ${M_P99[$name]} | ${M_CPU[$name]} | $(ratio "${M_RPS[$name]}" "${M_RPS[healthz]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[healthz]}") |"
    done
    echo
    bench_wrk_raw
} >"$report"

echo
printf '%-8s %10s %9s %12s %12s %12s\n' target 'req/s' 'p99(ms)' 'cpu(us/req)' 'rps/healthz' 'cpu/healthz'
for name in "${NAMES[@]}"; do
    printf '%-8s %10s %9s %12s %12s %12s\n' "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[healthz]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[healthz]}")"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "   wrk reported for $name: ${ERRORS[$name]}"; fi
done
echo
bench_written
