#!/usr/bin/env bash
# Load benchmark: Portcullis's GET /healthz (full middleware stack) against a bare axum hello-world
# (crates/server/examples/bare_axum.rs), measured in the same run so that the ratio means something on a
# shared 2-core machine.
#
# Targets:
#   portcullis-warn   release `portcullis serve`, PORTCULLIS_LOG__LEVEL=warn (access log filtered out)
#   portcullis-json   the same with PORTCULLIS_LOG__LEVEL=info, PORTCULLIS_LOG__FORMAT=json, stderr to
#                     /dev/null: what the access log costs when it is formatted and written
#   bare              bare_axum example: the figure the issue compares against
#   bare-headers      bare_axum sending Portcullis's ~0.8 KB of security headers: what the headers
#                     alone cost (bytes to write and for wrk to parse), so the middleware's own cost
#                     is the gap between this and portcullis-warn
#
# For each round, each target gets one `wrk -t1 -c32 -d${DURATION}s --latency` run (order rotated per
# round). Per target we report the median requests/s, the median p99 latency and the server's CPU time
# per request (utime+stime from /proc/PID/stat around each run, divided by the requests wrk counted).
#
# Usage: scripts/bench/healthz.sh            (ROUNDS=5 DURATION=5 CONNECTIONS=32 by default)
# Env:   ROUNDS, DURATION (s), CONNECTIONS, WARMUP (s), PORT_BASE (four consecutive loopback ports)
# Out:   a table on stdout and scripts/bench/out/healthz-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
PORT_BASE=${PORT_BASE:-18180}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

# Bound the whole run (the build excluded): 4 targets x ROUNDS x DURATION, warmups, startup.
bench_budget $(( ROUNDS * 4 * (DURATION + 1) + WARMUP * 4 + 30 )) "ROUNDS=$ROUNDS DURATION=$DURATION"

# --- tools -----------------------------------------------------------------------------------------
bench_tools curl getconf awk sort
bench_build --example bare_axum
BARE_BIN="$TARGET_DIR/release/examples/bare_axum"

# --- servers ---------------------------------------------------------------------------------------
NAMES=(portcullis-warn portcullis-json bare bare-headers)
declare -A PORT PID
PORT[portcullis-warn]=$PORT_BASE
PORT[portcullis-json]=$((PORT_BASE + 1))
PORT[bare]=$((PORT_BASE + 2))
PORT[bare-headers]=$((PORT_BASE + 3))
bench_tmp portcullis-bench

for name in "${NAMES[@]}"; do
    bench_port_free "http://127.0.0.1:${PORT[$name]}/" "port ${PORT[$name]} is already in use; set PORT_BASE"
done

mkdir -p "$TMP/warn" "$TMP/json"
bench_start "$TMP/warn.log" env PORTCULLIS_LOG__LEVEL=warn \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/warn" --listen "127.0.0.1:${PORT[portcullis-warn]}"
PID[portcullis-warn]=$BENCH_PID
bench_start /dev/null env PORTCULLIS_LOG__LEVEL=info PORTCULLIS_LOG__FORMAT=json \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/json" --listen "127.0.0.1:${PORT[portcullis-json]}"
PID[portcullis-json]=$BENCH_PID
bench_start "$TMP/bare.log" "$BARE_BIN" "127.0.0.1:${PORT[bare]}"
PID[bare]=$BENCH_PID
bench_start "$TMP/bare-headers.log" "$BARE_BIN" "127.0.0.1:${PORT[bare-headers]}" headers
PID[bare-headers]=$BENCH_PID

url() { echo "http://127.0.0.1:${PORT[$1]}/healthz"; }

for name in "${NAMES[@]}"; do
    bench_wait_up "${PID[$name]}" "$(url "$name")" "$name did not come up on $(url "$name")" "$TMP"/*.log
    bench_check_exe "${PID[$name]}" "$name" "$PORTCULLIS_BIN" "$BARE_BIN"
done
echo "== servers up: $(for n in "${NAMES[@]}"; do printf '%s=pid %s ' "$n" "${PID[$n]}"; done)" >&2

# --- measurement -----------------------------------------------------------------------------------
run_wrk() { # name duration -> prints wrk output
    bench_wrk "$2" "$(url "$1")"
}
bench_wrk_rounds 16

# --- report ----------------------------------------------------------------------------------------
bench_report_file healthz
{
    echo "# /healthz: Portcullis vs bare axum ($stamp)"
    echo
    bench_wrk_line
    echo "server CPU = utime+stime of the server process per request. Loopback only."
    bench_host
    bench_commit_line
    echo
    echo "| target | req/s | p99 (ms) | server CPU (µs/req) | rps vs bare | CPU/req vs bare | rps vs bare-headers | CPU/req vs bare-headers |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | ${M_RPS[$name]} | ${M_P99[$name]} | ${M_CPU[$name]} | $(ratio "${M_RPS[$name]}" "${M_RPS[bare]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[bare]}") | $(ratio "${M_RPS[$name]}" "${M_RPS[bare-headers]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[bare-headers]}") |"
    done
    echo
    bench_wrk_raw
} >"$report"

echo
printf '%-16s %10s %9s %12s %10s %10s %12s %12s\n' target 'req/s' 'p99(ms)' 'cpu(us/req)' 'rps/bare' 'cpu/bare' 'rps/bare+h' 'cpu/bare+h'
for name in "${NAMES[@]}"; do
    printf '%-16s %10s %9s %12s %10s %10s %12s %12s\n' "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[bare]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[bare]}")" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[bare-headers]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[bare-headers]}")"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "   wrk reported for $name: ${ERRORS[$name]}"; fi
done
echo
bench_written
