#!/usr/bin/env bash
# Load benchmark: POST /v1/authz/check (the check API applications ask) against GET /healthz on the
# same server, measured in the same run so that the ratio means something on a shared 2-core machine.
#
# One release `portcullis serve` (PORTCULLIS_LOG__LEVEL=warn, SQLite in a fresh data directory); one
# member account is signed up and logged in with curl, and every check asks, with its access token,
# whether it may end one of its own sessions (`sessions:delete` over a resource it owns: allowed).
# A check verifies the token (cached after the first time), reads the caller's role from the profile
# cache (a SQLite read every 2 s), parses the permission and runs the pure decision; the JSON body in
# and out is the rest. /healthz does none of that.
#
# Targets (same server, same wrk settings):
#   check     POST /v1/authz/check {"permission":"sessions:delete","resource":{"owner":"<own id>"}}
#   healthz   GET /healthz
# For each round, each target gets one `wrk -t1 -c32 -d${DURATION}s --latency` run (order rotated per
# round). Per target we report the median requests/s, the median p99 latency and the server's CPU time
# per request (utime+stime from /proc/PID/stat around each run, divided by the requests wrk counted).
#
# Usage: scripts/bench/authz.sh         (ROUNDS=5 DURATION=5 CONNECTIONS=32 by default)
# Env:   ROUNDS, DURATION (s), CONNECTIONS, WARMUP (s), PORT (loopback port)
# Out:   a table on stdout and scripts/bench/out/authz-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
PORT=${PORT:-18196}
PASSWORD="correct horse battery staple 42"
EMAIL="bench-authz@example.com"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

NAMES=(check healthz)

# Bound the whole run (the build excluded): 2 targets x ROUNDS x DURATION, warmups, startup.
bench_budget $(( ROUNDS * ${#NAMES[@]} * (DURATION + 1) + WARMUP * ${#NAMES[@]} + 30 )) "ROUNDS=$ROUNDS DURATION=$DURATION"

# --- tools -----------------------------------------------------------------------------------------
bench_tools curl getconf awk sort python3
bench_build

# --- server ----------------------------------------------------------------------------------------
bench_tmp portcullis-bench-authz
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
USER_ID=$(curl -s -H "Authorization: Bearer $TOKEN" "$BASE/v1/me" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
BODY="{\"permission\":\"sessions:delete\",\"resource\":{\"owner\":\"$USER_ID\"}}"
cat >"$TMP/check.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
status=$(curl -s -o "$TMP/check.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' -d "$BODY" "$BASE/v1/authz/check")
if [[ "$status" != 200 ]] || ! grep -q '"allowed":true' "$TMP/check.json"; then
    echo "POST /v1/authz/check answered $status: $(cat "$TMP/check.json")" >&2; exit 1
fi
echo "== server up: pid $SERVER_PID; $EMAIL signed up, logged in, /v1/authz/check allows" >&2

# --- measurement -----------------------------------------------------------------------------------
# Both targets are the one server.
declare -A PID=([check]=$SERVER_PID [healthz]=$SERVER_PID)
run_wrk() { # name duration -> prints wrk output
    case "$1" in
        check) bench_wrk "$2" -s "$TMP/check.lua" "$BASE/v1/authz/check" ;;
        healthz) bench_wrk "$2" "$BASE/healthz" ;;
    esac
}
# A 401 (say, an expired token) would be a fast answer that is not the thing measured.
bench_wrk_rounds 8 --fail-on-non-2xx

# --- report ----------------------------------------------------------------------------------------
bench_report_file authz
{
    echo "# POST /v1/authz/check (bearer token) vs GET /healthz on the same server ($stamp)"
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
