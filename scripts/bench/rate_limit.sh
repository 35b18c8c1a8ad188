#!/usr/bin/env bash
# Load benchmark: shedding a flood. One client floods GET /v1/me from loopback on a server with the
# default budgets (100 requests a minute per address): after its first 100 requests every answer is a
# 429 from the rate limit guard, which runs before authentication, the body and the route. Measured
# against GET /healthz (exempt from budgets) on the same server in the same run, so that the ratio
# means something on a shared 2-core machine: shedding must be at least as cheap as serving a probe.
#
# Then the key-cardinality attack: a second server that trusts loopback as a proxy is flooded for
# FLOOD seconds with a new random X-Forwarded-For address on every request (so every request spends a
# fresh budget), and the server's resident memory is sampled twice a second: peak and end, against
# its size before the flood. Budgets that are full again are swept every 5 s, so memory holds only
# the last seconds' addresses however many arrive.
#
# Targets of the first part (same server, same wrk settings):
#   limited   GET /v1/me, no credentials, every answer after the first 100 a 429
#   healthz   GET /healthz
# For each round, each target gets one `wrk -t1 -c32 -d${DURATION}s --latency` run (order rotated per
# round). Per target: the median requests/s, the median p99 latency and the server's CPU time per
# request (utime+stime from /proc/PID/stat around each run, divided by the requests wrk counted), and
# for `limited` the share of answers that were 429.
#
# Usage: scripts/bench/rate_limit.sh     (ROUNDS=5 DURATION=5 CONNECTIONS=32 FLOOD=60 by default)
# Env:   ROUNDS, DURATION (s), CONNECTIONS, WARMUP (s), FLOOD (s), PORT_BASE (two loopback ports)
# Out:   a table on stdout and scripts/bench/out/rate_limit-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2}
FLOOD=${FLOOD:-60}
PORT_BASE=${PORT_BASE:-18280}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

bench_budget $(( ROUNDS * 2 * (DURATION + 1) + WARMUP * 2 + FLOOD + 30 )) "ROUNDS=$ROUNDS DURATION=$DURATION FLOOD=$FLOOD"

# --- tools and servers -----------------------------------------------------------------------------
bench_tools curl getconf awk sort
bench_build
bench_tmp portcullis-bench-rate-limit
PORT=$PORT_BASE
FLOOD_PORT=$((PORT_BASE + 1))
BASE="http://127.0.0.1:$PORT"
FLOOD_BASE="http://127.0.0.1:$FLOOD_PORT"
bench_port_free "$BASE/" "port $PORT is already in use; set PORT_BASE"
bench_port_free "$FLOOD_BASE/" "port $FLOOD_PORT is already in use; set PORT_BASE"

mkdir -p "$TMP/data" "$TMP/flood"
bench_start "$TMP/server.log" env PORTCULLIS_LOG__LEVEL=warn \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/data" --listen "127.0.0.1:$PORT"
SERVER_PID=$BENCH_PID
bench_start "$TMP/flood.log" env PORTCULLIS_LOG__LEVEL=warn PORTCULLIS_HTTP__TRUSTED_PROXIES='["127.0.0.1/32"]' \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/flood" --listen "127.0.0.1:$FLOOD_PORT"
FLOOD_PID=$BENCH_PID
bench_wait_up "$SERVER_PID" "$BASE/healthz" "the server did not come up on $BASE" "$TMP/server.log"
bench_wait_up "$FLOOD_PID" "$FLOOD_BASE/healthz" "the flood server did not come up" "$TMP/flood.log"
bench_check_exe "$SERVER_PID" "" "$PORTCULLIS_BIN"
bench_check_exe "$FLOOD_PID" "" "$PORTCULLIS_BIN"

# Spend the address's budget first, so that every measured `limited` answer is the 429 path.
for _ in $(seq 1 110); do curl -s -o /dev/null "$BASE/v1/me"; done
status=$(curl -s -o /dev/null -w '%{http_code}' "$BASE/v1/me")
if [[ "$status" != 429 ]]; then
    echo "after 110 requests GET /v1/me answered $status, not 429: the budget is not being applied" >&2
    exit 1
fi

# --- shedding vs serving -----------------------------------------------------------------------------
NAMES=(limited healthz)
declare -A PID=([limited]=$SERVER_PID [healthz]=$SERVER_PID)
declare -A SHARE
run_wrk() { # name duration -> prints wrk output
    case "$1" in
        limited) bench_wrk "$2" "$BASE/v1/me" ;;
        healthz) bench_wrk "$2" "$BASE/healthz" ;;
    esac
}
bench_wrk_rounds 8
# wrk counts every non-2xx/3xx answer; on this route with no credentials those are 429s (refused by
# the guard) or 401s (let through, answered by the route): the 401s are the budget refilling.
share_of_429() {
    local output limited=0 total=0
    output=$(bench_wrk "$DURATION" -s "$TMP/status.lua" "$BASE/v1/me")
    limited=$(awk '/^status 429:/ { print $3 }' <<<"$output")
    total=$(awk '/requests in/ { print $1 }' <<<"$output")
    awk -v l="${limited:-0}" -v t="${total:-1}" 'BEGIN { printf "%.4f", l / t }'
}
cat >"$TMP/status.lua" <<'LUA'
-- counts is a global of each thread's Lua state, so that done() can read it through thread:get.
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init() counts = {} end
function response(status) counts[status] = (counts[status] or 0) + 1 end
function done()
  local total = {}
  for _, thread in ipairs(threads) do
    local c = thread:get("counts")
    for status, n in pairs(c) do total[status] = (total[status] or 0) + n end
  end
  for status, n in pairs(total) do io.write(string.format("status %d: %d\n", status, n)) end
end
LUA
SHARE[limited]=$(share_of_429)

# --- key-cardinality flood -----------------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
cat >"$TMP/spoof.lua" <<'LUA'
-- A new address on every request: a million clients that each send one request.
math.randomseed(os.time())
request = function()
  local ip = string.format("%d.%d.%d.%d", math.random(1, 223), math.random(0, 255), math.random(0, 255), math.random(1, 254))
  return wrk.format("GET", "/v1/me", { ["X-Forwarded-For"] = ip })
end
LUA
before_kib=$(rss_kib "$FLOOD_PID")
peak_kib=$before_kib
echo "== key-cardinality flood: ${FLOOD}s of random X-Forwarded-For addresses (server RSS before: ${before_kib} KiB)" >&2
bench_wrk "$FLOOD" -s "$TMP/spoof.lua" "$FLOOD_BASE/v1/me" >"$TMP/flood-wrk.txt" &
WRK_PID=$!
while kill -0 "$WRK_PID" 2>/dev/null; do
    now_kib=$(rss_kib "$FLOOD_PID")
    (( now_kib > peak_kib )) && peak_kib=$now_kib
    sleep 0.5
done
wait "$WRK_PID"
flood_requests=$(awk '/requests in/ { print $1 }' "$TMP/flood-wrk.txt")
flood_rps=$(awk '/^Requests\/sec:/ { print $2 }' "$TMP/flood-wrk.txt")
# One sweep later the budgets of the flood are gone.
sleep 6
end_kib=$(rss_kib "$FLOOD_PID")
hwm_kib=$(awk '/^VmHWM:/ { print $2 }' "/proc/$FLOOD_PID/status")

# --- report ----------------------------------------------------------------------------------------
bench_report_file rate_limit
{
    echo "# Shedding a flood: the 429 path vs GET /healthz, and memory under a key-cardinality attack ($stamp)"
    echo
    bench_wrk_line
    echo "release server, default budgets (100 requests a minute per address), PORTCULLIS_LOG__LEVEL=warn, SQLite;"
    echo "server CPU = utime+stime of the server process per request. Loopback only. $(bench_host)"
    bench_commit_line
    echo
    echo "| target | req/s | p99 (ms) | server CPU (µs/req) | rps vs healthz | CPU/req vs healthz | share 429 |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | ${M_RPS[$name]} | ${M_P99[$name]} | ${M_CPU[$name]} | $(ratio "${M_RPS[$name]}" "${M_RPS[healthz]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[healthz]}") | ${SHARE[$name]:--} |"
    done
    echo
    echo "Key-cardinality flood: ${flood_requests} requests in ${FLOOD}s (${flood_rps} req/s), each from a new random"
    echo "address through a trusted proxy (about as many distinct budgets). Server RSS: ${before_kib} KiB before,"
    echo "peak ${peak_kib} KiB sampled (VmHWM ${hwm_kib} KiB), ${end_kib} KiB 6 s after the flood."
    echo
    bench_wrk_raw
} >"$report"

echo
printf '%-8s %10s %9s %12s %12s %12s %10s\n' target 'req/s' 'p99(ms)' 'cpu(us/req)' 'rps/healthz' 'cpu/healthz' 'share429'
for name in "${NAMES[@]}"; do
    printf '%-8s %10s %9s %12s %12s %12s %10s\n' "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[healthz]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[healthz]}")" "${SHARE[$name]:--}"
done
echo "flood: ${flood_requests} requests (${flood_rps} req/s) from random addresses; RSS ${before_kib} KiB before, peak ${peak_kib} (VmHWM ${hwm_kib}), ${end_kib} after"
echo
bench_written
