#!/usr/bin/env bash
# Load benchmark: POST /v1/auth/login against the password-hashing floor, measured in the same run.
#
# Floor: crates/server/examples/hash_floor.rs hashes passwords through the server's own hashing path
# (PasswordHasher, HashAlgorithm::default(): argon2id m=19456 t=2 p=1) and prints the median wall
# time, CPU time and page faults of one hash, HASHES times one at a time once the allocator reuses
# the hash's memory ("warm"); the same for the first hashes, whose 19 MiB come fresh from the
# kernel ("cold"); and the rate and CPU per hash with one hash per core at once ("all cores"). The
# floor throughput is cores ÷ one warm hash's wall time: what the machine could do if it did nothing
# but hash. The all-cores rate is the same thing measured, page faults and memory contention included.
#
# Load: one account is signed up, then `wrk -tC -cC` posts its (correct) credentials to
# /v1/auth/login with C connections, one per wrk thread so that each thread's Lua state sees its own
# requests in order and can time them; the Lua script counts 200s, 503s (load shed: the hashing
# pool's workers + queue are taken) and anything else, and collects the latency of every successful
# login for its own p50/p99 (wrk's histogram mixes in the 503s, which come back at once). Except in
# the -backoff target, clients retry a 503 at once rather than honouring Retry-After: the worst case
# for the server.
#
# Targets (release `portcullis serve`, PORTCULLIS_LOG__LEVEL=warn, default pool: workers = cores,
# queue = 4 × workers, so cores × 5 logins may be admitted at once — 10 on two cores):
#   login-c8    8 connections: within the pool, so nothing should be shed
#   login-c16   16 connections: above the pool, shedding shows
#   login-c64   64 connections: far above it
#   login-c64-backoff   64 connections whose clients honour Retry-After: after a 503 a connection
#               waits 1 s before its next request, as a well-behaved client would
# A second server, configured with argon2id m=64 KiB t=1, is driven at 8 connections once per round
# (login-cheap-hash): its CPU per login is everything a login costs besides the hash (HTTP, JSON,
# the account read, the session write, the JWT).
# Each round runs the floor first (servers idle), then login-cheap-hash, then each target once for
# DURATION seconds, order rotated per round. Per target we report medians over rounds of: successful logins/s, server CPU per
# successful login (utime+stime of the server process around the run ÷ 200s), minor page faults per
# successful login, p50/p99 of successful logins, and the share of 503s; ratios against the floor
# are ratios of the medians.
#
# Usage: scripts/bench/login.sh            (ROUNDS=3 DURATION=5 HASHES=30 by default)
# Env:   ROUNDS, DURATION (s), HASHES (per floor measurement), WARMUP (s), PORT (the first of two
#        consecutive loopback ports)
# Out:   a table on stdout and scripts/bench/out/login-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
HASHES=${HASHES:-30}
WARMUP=${WARMUP:-2}
PORT=${PORT:-18190}
PASSWORD="correct horse battery staple 42"
EMAIL="bench-login@example.com"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh

NAMES=(login-c8 login-c16 login-c64 login-c64-backoff)
declare -A CONNS=([login-c8]=8 [login-c16]=16 [login-c64]=64 [login-c64-backoff]=64)

# Bound the whole run (the build excluded): targets x ROUNDS x DURATION, one floor per round (up to
# 40 warm-up hashes, then HASHES one at a time and HASHES per core at once; a hash is ~11-20 ms
# here), warmup, startup and the signup.
bench_budget $(( ROUNDS * ((${#NAMES[@]} + 1) * (DURATION + 1) + 1 + HASHES / 15) + 2 * WARMUP + 30 )) \
    "ROUNDS=$ROUNDS DURATION=$DURATION HASHES=$HASHES"

# --- tools -----------------------------------------------------------------------------------------
bench_tools curl getconf awk sort
CORES=$(nproc)
bench_build --example hash_floor
FLOOR_BIN="$TARGET_DIR/release/examples/hash_floor"

# --- servers ---------------------------------------------------------------------------------------
# main:  the default configuration, which every target drives.
# cheap: the same with argon2id m=64 KiB t=1 (a hash of a few tens of µs), driven at 8 connections
#        once per round, so its CPU per login is what a login costs besides the hash.
SERVERS=(main cheap)
declare -A PID BASE_URL
BASE_URL[main]="http://127.0.0.1:$PORT"
BASE_URL[cheap]="http://127.0.0.1:$((PORT + 1))"
bench_tmp portcullis-bench-login

for name in "${SERVERS[@]}"; do
    bench_port_free "${BASE_URL[$name]}/" "port of ${BASE_URL[$name]} is already in use; set PORT (two consecutive ports)"
done

mkdir -p "$TMP/main" "$TMP/cheap"
bench_start "$TMP/main.log" env PORTCULLIS_LOG__LEVEL=warn PORTCULLIS_RATE_LIMITS__ENABLED=false \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/main" --listen "${BASE_URL[main]#http://}"
PID[main]=$BENCH_PID
bench_start "$TMP/cheap.log" env PORTCULLIS_LOG__LEVEL=warn PORTCULLIS_RATE_LIMITS__ENABLED=false PORTCULLIS_PASSWORD__ARGON2_MEMORY_KIB=64 PORTCULLIS_PASSWORD__ARGON2_ITERATIONS=1 \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/cheap" --listen "${BASE_URL[cheap]#http://}"
PID[cheap]=$BENCH_PID

body="{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\"}"
for name in "${SERVERS[@]}"; do
    base=${BASE_URL[$name]}
    bench_wait_up "${PID[$name]}" "$base/healthz" "server $name did not come up on $base" "$TMP/$name.log"
    bench_check_exe "${PID[$name]}" "$name" "$PORTCULLIS_BIN"
    bench_signup "$base" "$EMAIL" "$PASSWORD" "$name"
    status=$(curl -s -o "$TMP/login.json" -w '%{http_code}' -H 'Content-Type: application/json' -d "$body" \
        "$base/v1/auth/login")
    if [[ "$status" != 200 ]] || ! grep -q '"access_token"' "$TMP/login.json"; then
        echo "a login on $name after signup answered $status: $(cat "$TMP/login.json")" >&2; exit 1
    fi
done
SERVER_PID=${PID[main]}
echo "== servers up: main=pid ${PID[main]} cheap=pid ${PID[cheap]}; $EMAIL signed up and logged in once on each" >&2

# One connection per wrk thread: request() and response() of a thread then alternate, so the time
# between them is that request's latency (LuaJIT's ffi reads CLOCK_MONOTONIC).
write_lua() { # file backoff_ms
cat >"$1" <<LUA
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
    ffi.C.clock_gettime(1, ts)
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

wrk.method = "POST"
wrk.body = '$body'
wrk.headers["Content-Type"] = "application/json"

local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
    ok, shed, other, lat, started = 0, 0, 0, {}, 0
end

function request()
    started = now_ms()
    return wrk.format()
end

local backoff_ms, waiting = $2, false
if backoff_ms > 0 then
    -- Defining delay() makes wrk ask before every request; 0 means at once.
    function delay()
        if waiting then waiting = false; return backoff_ms end
        return 0
    end
end

function response(status, headers, body)
    if status == 200 then
        ok = ok + 1
        lat[#lat + 1] = now_ms() - started
    elseif status == 503 then
        shed = shed + 1
        waiting = true
    else
        other = other + 1
    end
end

function done(summary, latency, requests)
    local o, s, x, all = 0, 0, 0, {}
    for _, t in ipairs(threads) do
        o = o + t:get("ok"); s = s + t:get("shed"); x = x + t:get("other")
        for _, v in ipairs(t:get("lat")) do all[#all + 1] = v end
    end
    table.sort(all)
    local function pct(p)
        if #all == 0 then return 0 end
        local i = math.max(1, math.ceil(p * #all))
        return all[i]
    end
    io.write(string.format("LOGIN ok=%d shed=%d other=%d duration_s=%.3f ok_p50_ms=%.2f ok_p99_ms=%.2f ok_max_ms=%.2f\n",
        o, s, x, summary.duration / 1e6, pct(0.50), pct(0.99), all[#all] or 0))
end
LUA
}
write_lua "$TMP/login.lua" 0
write_lua "$TMP/login-backoff.lua" 1000

# --- measurement -----------------------------------------------------------------------------------
# The minor page faults of a process (field 10 of /proc/PID/stat; the comm field may hold spaces).
minor_faults() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $8 }' <<<"$stat"
}

run_wrk() { # connections duration [lua [server]] -> prints wrk output
    timeout $(( $2 + 20 )) wrk -t"$1" -c"$1" -d"$2"s --timeout 10s -s "${3:-$TMP/login.lua}" \
        "${BASE_URL[${4:-main}]}/v1/auth/login"
}
field() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" <<<"$2" | head -n 1; }

declare -A OK_RPS CPU_MS FAULTS P50 P99 PMAX SHED_PCT SHED_RPS OTHER ERRORS
FLOOR_MS="" FLOOR_CPU="" COLD_MS="" COLD_CPU="" COLD_FAULTS="" PAR_RATE="" PAR_CPU="" PAR_FAULTS="" REST_US="" REST_RPS=""

echo "== warmup ${WARMUP}s each" >&2
run_wrk 8 "$WARMUP" >/dev/null
run_wrk 8 "$WARMUP" "$TMP/login.lua" cheap >/dev/null

for (( round = 0; round < ROUNDS; round++ )); do
    line=$("$FLOOR_BIN" "$HASHES")
    ms=$(field median_ms "$line"); cpu=$(field cpu_ms "$line")
    [[ -n "$ms" && -n "$cpu" ]] || { echo "hash_floor gave no result: $line" >&2; exit 1; }
    FLOOR_MS+="$ms "; FLOOR_CPU+="$cpu "
    # No cold hash in a round (the allocator was warm at once) leaves "nan", which median() skips;
    # with none in any round, the cold figures read 0.
    COLD_MS+="$(field cold_ms "$line") "; COLD_CPU+="$(field cold_cpu_ms "$line") "
    COLD_FAULTS+="$(field cold_faults "$line") "
    PAR_RATE+="$(field par_rate "$line") "; PAR_CPU+="$(field par_cpu_ms "$line") "
    PAR_FAULTS+="$(field par_faults "$line") "
    HASH_PARAMS=$(sed -n 's/.*\(algorithm=[^ ]* m=[^ ]* t=[^ ]* p=[^ ]*\).*/\1/p' <<<"$line")
    printf '   round %d  %-18s warm %7s ms (cpu %7s) -> %6s/s; cold %7s ms; all cores %7s/s, cpu %7s ms, %s faults/hash\n' \
        $((round + 1)) floor "$ms" "$cpu" "$(awk -v c="$CORES" -v m="$ms" 'BEGIN { printf "%.1f", c * 1000 / m }')" \
        "$(field cold_ms "$line")" "$(field par_rate "$line")" "$(field par_cpu_ms "$line")" "$(field par_faults "$line")" >&2
    # Everything a login does besides the hash: the cheap server, 8 connections, one short run.
    before=$(cpu_ticks "${PID[cheap]}")
    output=$(run_wrk 8 "$DURATION" "$TMP/login.lua" cheap)
    after=$(cpu_ticks "${PID[cheap]}")
    result=$(grep '^LOGIN ' <<<"$output" || true)
    ok=$(field ok "$result")
    if [[ -z "$ok" || "$ok" == 0 || "$(field shed "$result")$(field other "$result")" != 00 ]]; then
        echo "wrk against the cheap-hash server did not only log in:" >&2; echo "$output" >&2; exit 1
    fi
    rest_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    REST_US+="$rest_us "
    REST_RPS+="$(awk -v n="$ok" -v s="$(field duration_s "$result")" 'BEGIN { printf "%.1f", n / s }') "
    printf '   round %d  %-18s %8s us CPU per login with a cheap hash (m=64 KiB, t=1)\n' $((round + 1)) login-cheap-hash "$rest_us" >&2
    for (( i = 0; i < ${#NAMES[@]}; i++ )); do
        name=${NAMES[$(( (i + round) % ${#NAMES[@]} ))]}
        before=$(cpu_ticks "$SERVER_PID"); faults_before=$(minor_faults "$SERVER_PID")
        lua="$TMP/login.lua"; [[ "$name" == *-backoff ]] && lua="$TMP/login-backoff.lua"
        output=$(run_wrk "${CONNS[$name]}" "$DURATION" "$lua")
        after=$(cpu_ticks "$SERVER_PID"); faults_after=$(minor_faults "$SERVER_PID")
        result=$(grep '^LOGIN ' <<<"$output" || true)
        ok=$(field ok "$result"); shed=$(field shed "$result"); other=$(field other "$result")
        secs=$(field duration_s "$result")
        if [[ -z "$ok" || "$ok" == 0 ]]; then
            echo "wrk against $name gave no successful login:" >&2; echo "$output" >&2; exit 1
        fi
        errors=$(awk '/Socket errors/ { printf "%s; ", $0 }' <<<"$output")
        ok_rps=$(awk -v n="$ok" -v s="$secs" 'BEGIN { printf "%.2f", n / s }')
        cpu_ms=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$ok" 'BEGIN { printf "%.3f", t / hz * 1e3 / n }')
        shed_pct=$(awk -v o="$ok" -v s="$shed" -v x="$other" 'BEGIN { printf "%.2f", 100 * s / (o + s + x) }')
        shed_rps=$(awk -v n="$shed" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')
        OK_RPS[$name]+="$ok_rps "
        CPU_MS[$name]+="$cpu_ms "
        FAULTS[$name]+="$(awk -v f=$((faults_after - faults_before)) -v n="$ok" 'BEGIN { printf "%.0f", f / n }') "
        P50[$name]+="$(field ok_p50_ms "$result") "
        P99[$name]+="$(field ok_p99_ms "$result") "
        PMAX[$name]+="$(field ok_max_ms "$result") "
        SHED_PCT[$name]+="$shed_pct "
        SHED_RPS[$name]+="$shed_rps "
        OTHER[$name]+="$other "
        if [[ -n "$errors" ]]; then ERRORS[$name]+="round $((round + 1)): $errors"; fi
        printf '   round %d  %-18s %8s ok/s  cpu %7s ms/ok  p99 %8s ms  503 %6s%% (%s/s)  other %s\n' \
            $((round + 1)) "$name" "$ok_rps" "$cpu_ms" "$(field ok_p99_ms "$result")" "$shed_pct" "$shed_rps" "$other" >&2
    done
done

fmt() { awk -v v="$1" -v d="${2:-2}" 'BEGIN { printf "%.*f", d, v }'; }

M_FLOOR_MS=$(median "$FLOOR_MS" 3)
M_FLOOR_CPU=$(median "$FLOOR_CPU" 3)
M_COLD_MS=$(median "$COLD_MS" 3); M_COLD_CPU=$(median "$COLD_CPU" 3); M_COLD_FAULTS=$(median "$COLD_FAULTS" 3)
M_PAR_RATE=$(median "$PAR_RATE" 3); M_PAR_CPU=$(median "$PAR_CPU" 3); M_PAR_FAULTS=$(median "$PAR_FAULTS" 3)
M_REST_US=$(median "$REST_US" 3); M_REST_RPS=$(median "$REST_RPS" 3)
FLOOR_RPS=$(awk -v c="$CORES" -v m="$M_FLOOR_MS" 'BEGIN { printf "%.2f", c * 1000 / m }')
# A successful login waits at most for the hashes admitted before it: (workers + queue) / workers
# hash times with the default pool (workers = cores, queue = 4 x cores), i.e. 5 hash times.
QUEUE_BOUND_MS=$(awk -v m="$M_FLOOR_MS" 'BEGIN { printf "%.1f", 5 * m }')

declare -A M_RPS M_CPU M_FAULTS M_P50 M_P99 M_PMAX M_SHED M_SHED_RPS
for name in "${NAMES[@]}"; do
    M_RPS[$name]=$(median "${OK_RPS[$name]}" 3)
    M_CPU[$name]=$(median "${CPU_MS[$name]}" 3)
    M_FAULTS[$name]=$(median "${FAULTS[$name]}" 3)
    M_P50[$name]=$(median "${P50[$name]}" 3)
    M_P99[$name]=$(median "${P99[$name]}" 3)
    M_PMAX[$name]=$(median "${PMAX[$name]}" 3)
    M_SHED[$name]=$(median "${SHED_PCT[$name]}" 3)
    M_SHED_RPS[$name]=$(median "${SHED_RPS[$name]}" 3)
done

# --- report ----------------------------------------------------------------------------------------
bench_report_file login
{
    echo "# POST /v1/auth/login vs the password-hashing floor ($stamp)"
    echo
    echo "Floor: \`hash_floor $HASHES\` ($HASH_PARAMS through \`PasswordHasher\`), medians over $ROUNDS rounds;"
    echo "floor throughput = $CORES cores ÷ one warm hash's wall time. Load: \`wrk -tC -cC -d${DURATION}s\` with C connections,"
    echo "correct credentials, 503s retried at once (-backoff: after 1 s, as Retry-After asks); each round runs the floor,"
    echo "then the cheap-hash server, then each target (order rotated); medians. Server CPU = utime+stime of the server process ÷ successful logins. Default pool:"
    echo "$CORES workers, queue $(( 4 * CORES )). Loopback only. Host: $CORES cores,"
    echo "$(cpu_model);"
    bench_commit_line
    echo
    echo "| hashing | wall (ms/hash) | CPU (ms/hash) | page faults/hash | hashes/s |"
    echo "|---|---:|---:|---:|---:|"
    echo "| one at a time, warm: **the floor** | $(fmt "$M_FLOOR_MS") | $(fmt "$M_FLOOR_CPU") | 0 | $(fmt "$FLOOR_RPS" 1) ($CORES ÷ wall) |"
    echo "| one at a time, cold (fresh pages) | $(fmt "$M_COLD_MS") | $(fmt "$M_COLD_CPU") | $(fmt "$M_COLD_FAULTS" 0) | $(awk -v c="$CORES" -v m="$M_COLD_MS" 'BEGIN { if (m > 0) printf "%.1f", c * 1000 / m; else printf "–" }') ($CORES ÷ wall) |"
    echo "| $CORES at once (measured) | – | $(fmt "$M_PAR_CPU") | $(fmt "$M_PAR_FAULTS" 0) | $(fmt "$M_PAR_RATE" 1) |"
    echo
    echo "| target | logins/s (200) | vs floor | vs $CORES-at-once rate | server CPU/login (ms) | vs warm hash CPU | vs $CORES-at-once CPU | page faults/login |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | $(fmt "${M_RPS[$name]}" 1) | $(ratio "${M_RPS[$name]}" "$FLOOR_RPS") | $(ratio "${M_RPS[$name]}" "$M_PAR_RATE") | $(fmt "${M_CPU[$name]}") | $(ratio "${M_CPU[$name]}" "$M_FLOOR_CPU") | $(ratio "${M_CPU[$name]}" "$M_PAR_CPU") | $(fmt "${M_FAULTS[$name]}" 0) |"
    done
    echo
    echo "| target | p50 200 (ms) | p99 200 (ms) | max 200 (ms) | 503 share | 503/s |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | $(fmt "${M_P50[$name]}" 1) | $(fmt "${M_P99[$name]}" 1) | $(fmt "${M_PMAX[$name]}" 1) | $(fmt "${M_SHED[$name]}" 1) % | $(fmt "${M_SHED_RPS[$name]}" 0) |"
    done
    echo
    echo "Everything a login does besides its hash (a second server with argon2id m=64 KiB t=1, \`wrk -t8 -c8\`):"
    echo "$(fmt "$M_REST_US" 0) µs of server CPU per login at $(fmt "$M_REST_RPS" 0) logins/s = $(awk -v r="$M_REST_US" -v h="$M_FLOOR_CPU" 'BEGIN { printf "%.1f", r / 10 / h }') % of one warm hash's CPU."
    echo
    echo "A login admitted to the pool waits for at most (workers + queue) ÷ workers = 5 hash times:"
    echo "$QUEUE_BOUND_MS ms at the warm floor, $(awk -v m="$M_COLD_MS" 'BEGIN { printf "%.1f", 5 * m }') ms cold."
    echo
    echo "Raw per-round values (floor: warm ms; warm CPU ms; cold ms; $CORES-at-once hashes/s; $CORES-at-once CPU ms."
    echo "Targets: logins/s; CPU ms/login; faults/login; p99 ms; 503 %; other statuses):"
    echo
    echo "- floor: ${FLOOR_MS% }; ${FLOOR_CPU% }; ${COLD_MS% }; ${PAR_RATE% }; ${PAR_CPU% }"
    echo "- login with a cheap hash (µs CPU/login; logins/s): ${REST_US% }; ${REST_RPS% }"
    for name in "${NAMES[@]}"; do
        echo "- $name: ${OK_RPS[$name]% }; ${CPU_MS[$name]% }; ${FAULTS[$name]% }; ${P99[$name]% }; ${SHED_PCT[$name]% }; ${OTHER[$name]% }"
        if [[ -n "${ERRORS[$name]:-}" ]]; then echo "  - wrk reported: ${ERRORS[$name]}"; fi
    done
} >"$report"

echo
echo "floor: warm $(fmt "$M_FLOOR_MS") ms/hash ($(fmt "$M_FLOOR_CPU") ms CPU) -> $(fmt "$FLOOR_RPS" 1) logins/s on $CORES cores;" \
    "cold $(fmt "$M_COLD_MS") ms; $CORES at once $(fmt "$M_PAR_RATE" 1)/s at $(fmt "$M_PAR_CPU") ms CPU/hash"
echo "login besides the hash: $(fmt "$M_REST_US" 0) us CPU/login ($(awk -v r="$M_REST_US" -v h="$M_FLOOR_CPU" 'BEGIN { printf "%.1f", r / 10 / h }') % of a warm hash)"
printf '%-18s %9s %9s %9s %11s %9s %9s %8s %9s %7s %6s\n' target 'ok/s' 'vs floor' "vs ${CORES}x" 'cpu(ms/ok)' 'vs hash' "vs ${CORES}x" 'faults' 'p99(ms)' '503 %' other
for name in "${NAMES[@]}"; do
    printf '%-18s %9s %9s %9s %11s %9s %9s %8s %9s %7s %6s\n' "$name" "$(fmt "${M_RPS[$name]}" 1)" \
        "$(ratio "${M_RPS[$name]}" "$FLOOR_RPS")" "$(ratio "${M_RPS[$name]}" "$M_PAR_RATE")" \
        "$(fmt "${M_CPU[$name]}")" "$(ratio "${M_CPU[$name]}" "$M_FLOOR_CPU")" "$(ratio "${M_CPU[$name]}" "$M_PAR_CPU")" \
        "$(fmt "${M_FAULTS[$name]}" 0)" "$(fmt "${M_P99[$name]}" 1)" "$(fmt "${M_SHED[$name]}" 1)" "$(tr -s " " "," <<<"${OTHER[$name]% }")"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "   wrk reported for $name: ${ERRORS[$name]}"; fi
done
echo
bench_written
