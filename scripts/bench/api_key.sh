#!/usr/bin/env bash
# Load benchmark: GET /v1/me authenticated with an API key and with a bearer access token, against
# GET /healthz on the same server, measured in the same run so that the ratios mean something on a
# shared 2-core machine.
#
# One release `portcullis serve` (PORTCULLIS_LOG__LEVEL=warn, SQLite in a fresh data directory); one
# member account is signed up and logged in with curl and issues itself an API key scoped to
# `profile:read`. An API key request checks the key's checksum, takes the key row from the node's
# 2 s cache (a SQLite read every 2 s), compares the secret's SHA-256 in constant time, checks the
# owner through the profile cache, narrows the owner's grants to the key's scopes and records its use
# at most once a minute; a JWT request verifies the token once and then answers from the verified-token
# cache. Both then read the profile from the profile cache.
#
# Targets (same server, same wrk settings):
#   apikey    GET /v1/me, X-API-Key: pcs_...
#   jwt       GET /v1/me, Authorization: Bearer <access token>
#   healthz   GET /healthz
# For each round, each target gets one `wrk -t1 -c32 -d${DURATION}s --latency` run (order rotated per
# round). Per target we report the median requests/s, the median p99 latency and the server's CPU time
# per request (utime+stime from /proc/PID/stat around each run, divided by the requests wrk counted).
#
# Usage: scripts/bench/api_key.sh       (ROUNDS=5 DURATION=5 CONNECTIONS=32 by default)
# Env:   ROUNDS, DURATION (s), CONNECTIONS, WARMUP (s), PORT (loopback port)
# Out:   a table on stdout and scripts/bench/out/api_key-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
PORT=${PORT:-18197}
PASSWORD="correct horse battery staple 42"
EMAIL="bench-apikey@example.com"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

NAMES=(apikey jwt healthz)

# Bound the whole run (the build excluded): 2 targets x ROUNDS x DURATION, warmups, startup.
bench_budget $(( ROUNDS * ${#NAMES[@]} * (DURATION + 1) + WARMUP * ${#NAMES[@]} + 30 )) "ROUNDS=$ROUNDS DURATION=$DURATION"

# --- tools -----------------------------------------------------------------------------------------
bench_tools curl getconf awk sort python3
bench_build

# --- server ----------------------------------------------------------------------------------------
bench_tmp portcullis-bench-apikey
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
status=$(curl -s -o "$TMP/key.json" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"name":"bench","scopes":["profile:read"],"expires_in_days":1}' "$BASE/v1/me/api-keys")
KEY=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"])' "$TMP/key.json" 2>/dev/null || true)
if [[ "$status" != 201 || -z "$KEY" ]]; then
    echo "POST /v1/me/api-keys answered $status: $(cat "$TMP/key.json")" >&2; exit 1
fi
for header in "X-API-Key: $KEY" "Authorization: Bearer $TOKEN"; do
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "$header" "$BASE/v1/me")
    [[ "$status" == 200 ]] || { echo "GET /v1/me answered $status" >&2; exit 1; }
done
cat >"$TMP/apikey.lua" <<LUA
wrk.headers["X-API-Key"] = "$KEY"
LUA
cat >"$TMP/jwt.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA
echo "== server up: pid $SERVER_PID; $EMAIL has an access token and an API key; /v1/me answers both" >&2

# --- measurement -----------------------------------------------------------------------------------
# Both targets are the one server.
declare -A PID=([apikey]=$SERVER_PID [jwt]=$SERVER_PID [healthz]=$SERVER_PID)
run_wrk() { # name duration -> prints wrk output
    case "$1" in
        apikey) bench_wrk "$2" -s "$TMP/apikey.lua" "$BASE/v1/me" ;;
        jwt) bench_wrk "$2" -s "$TMP/jwt.lua" "$BASE/v1/me" ;;
        healthz) bench_wrk "$2" "$BASE/healthz" ;;
    esac
}
# A 401 (say, a refused key) would be a fast answer that is not the thing measured.
bench_wrk_rounds 8 --fail-on-non-2xx

# --- report ----------------------------------------------------------------------------------------
bench_report_file api_key
{
    echo "# GET /v1/me with an API key and with a bearer token vs GET /healthz on the same server ($stamp)"
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
