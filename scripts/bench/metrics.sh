#!/usr/bin/env bash
# Load benchmark: what counting requests into the metrics costs. The same release binary twice,
# measured in the same run on GET /v1/me with a bearer token (a matched route with a template, so
# every label is filled) — once with metrics.enabled = true (each request counted: a counter, a
# latency histogram and the in-flight gauge) and once with metrics.enabled = false (the edge does no
# metrics work). A third target scrapes GET /metrics itself, after the load has filled the registry,
# to show what one scrape costs.
#
# For each round, each target gets one `wrk -t1 -c32 -d${DURATION}s --latency` run (order rotated per
# round). Per target: the median requests/s, the median p99 latency and the server's CPU time per
# request (utime+stime from /proc/PID/stat around each run, divided by the requests wrk counted).
#
# Usage: scripts/bench/metrics.sh            (ROUNDS=5 DURATION=5 CONNECTIONS=32 by default)
# Env:   ROUNDS, DURATION (s), CONNECTIONS, WARMUP (s), PORT_BASE (two consecutive loopback ports)
# Out:   a table on stdout and scripts/bench/out/metrics-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
PORT_BASE=${PORT_BASE:-18280}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

bench_budget $(( ROUNDS * 3 * (DURATION + 1) + WARMUP * 3 + 60 )) "ROUNDS=$ROUNDS DURATION=$DURATION"

bench_tools curl getconf awk sort
bench_build

NAMES=(counted uncounted scrape)
declare -A PORT PID
PORT[counted]=$PORT_BASE
PORT[uncounted]=$((PORT_BASE + 1))
bench_tmp portcullis-bench-metrics

for port in "${PORT[counted]}" "${PORT[uncounted]}"; do
    bench_port_free "http://127.0.0.1:$port/" "port $port is already in use; set PORT_BASE"
done

# Budgets and the hashing cost out of the way: the figure is the edge's, not the rate limiter's.
common=(PORTCULLIS_LOG__LEVEL=warn PORTCULLIS_RATE_LIMITS__ENABLED=false PORTCULLIS_ACCOUNTS__SIGNUP=open
    PORTCULLIS_ACCOUNTS__REQUIRE_VERIFIED_EMAIL=false PORTCULLIS_METRICS__ALLOW='["127.0.0.1/32"]')
mkdir -p "$TMP/counted" "$TMP/uncounted"
bench_start "$TMP/counted.log" env "${common[@]}" PORTCULLIS_METRICS__ENABLED=true \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/counted" --listen "127.0.0.1:${PORT[counted]}"
PID[counted]=$BENCH_PID
bench_start "$TMP/uncounted.log" env "${common[@]}" PORTCULLIS_METRICS__ENABLED=false \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/uncounted" --listen "127.0.0.1:${PORT[uncounted]}"
PID[uncounted]=$BENCH_PID
# The scrape target is the counted server's /metrics.
PID[scrape]=${PID[counted]}

for name in counted uncounted; do
    bench_wait_up "${PID[$name]}" "http://127.0.0.1:${PORT[$name]}/healthz" "$name did not come up" "$TMP"/*.log
    bench_check_exe "${PID[$name]}" "$name" "$PORTCULLIS_BIN"
done

declare -A TOKEN
PASSWORD="quiet harbor lantern nineteen"
for name in counted uncounted; do
    base="http://127.0.0.1:${PORT[$name]}"
    bench_signup "$base" "bench-$name@example.com" "$PASSWORD" "$name"
    status=$(curl -s -o "$TMP/login.json" -w '%{http_code}' -H 'Content-Type: application/json' \
        -d "{\"email\":\"bench-$name@example.com\",\"password\":\"$PASSWORD\"}" "$base/v1/auth/login")
    TOKEN[$name]=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["access_token"])' \
        "$TMP/login.json" 2>/dev/null || true)
    if [[ "$status" != 200 || -z "${TOKEN[$name]}" ]]; then
        echo "login on $name answered $status: $(cat "$TMP/login.json")" >&2; exit 1
    fi
done
echo "== servers up: counted=pid ${PID[counted]} uncounted=pid ${PID[uncounted]}" >&2

run_wrk() { # name duration -> prints wrk output
    case $1 in
        scrape) bench_wrk "$2" "http://127.0.0.1:${PORT[counted]}/metrics" ;;
        *) bench_wrk "$2" -H "Authorization: Bearer ${TOKEN[$1]}" "http://127.0.0.1:${PORT[$1]}/v1/me" ;;
    esac
}
bench_wrk_rounds 10 --fail-on-non-2xx

bench_report_file metrics
{
    echo "# Counting requests into the metrics: GET /v1/me with metrics on and off ($stamp)"
    echo
    bench_wrk_line
    echo "server CPU = utime+stime of the server process per request. Loopback only."
    bench_host
    bench_commit_line
    echo
    echo "| target | req/s | p99 (ms) | server CPU (µs/req) | rps vs uncounted | CPU/req vs uncounted |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | ${M_RPS[$name]} | ${M_P99[$name]} | ${M_CPU[$name]} | $(ratio "${M_RPS[$name]}" "${M_RPS[uncounted]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[uncounted]}") |"
    done
    echo
    bench_wrk_raw
} >"$report"

echo
printf '%-10s %10s %9s %12s %12s %12s\n' target 'req/s' 'p99(ms)' 'cpu(us/req)' 'rps/uncnt' 'cpu/uncnt'
for name in "${NAMES[@]}"; do
    printf '%-10s %10s %9s %12s %12s %12s\n' "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[uncounted]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[uncounted]}")"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "   wrk reported for $name: ${ERRORS[$name]}"; fi
done
echo
bench_written
