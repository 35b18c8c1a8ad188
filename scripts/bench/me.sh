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
OUT_DIR="$ROOT/scripts/bench/out"
cd "$ROOT"

NAMES=(me healthz)

# Bound the whole run (the build excluded): 2 targets x ROUNDS x DURATION, warmups, startup.
budget=$(( ROUNDS * ${#NAMES[@]} * (DURATION + 1) + WARMUP * ${#NAMES[@]} + 30 ))
if (( budget > 200 )); then
    echo "ROUNDS=$ROUNDS DURATION=$DURATION would take ~${budget}s; keep it under ~3 minutes" >&2
    exit 2
fi

# --- tools -----------------------------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk" >&2
    SUDO=""
    if (( EUID != 0 )) && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
    if ! $SUDO apt-get install -y wrk >/dev/null; then
        $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null
    fi
fi
for tool in curl getconf awk sort python3; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing tool: $tool" >&2; exit 2; }
done
CLK_TCK=$(getconf CLK_TCK)

echo "== cargo build --release -p portcullis --bin portcullis" >&2
cargo build --release -p portcullis --bin portcullis >&2
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET_DIR=${TARGET_DIR:-$ROOT/target}
PORTCULLIS_BIN="$TARGET_DIR/release/portcullis"

# --- server ----------------------------------------------------------------------------------------
TMP=$(mktemp -d /tmp/portcullis-bench-me.XXXXXX)
SERVER_PID=""
cleanup() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BASE="http://127.0.0.1:$PORT"
if curl -s -o /dev/null --max-time 1 "$BASE/"; then
    echo "port $PORT is already in use; set PORT" >&2
    exit 2
fi

mkdir -p "$TMP/data"
# Started directly (no wrapper shell), so $! is the server's own pid for /proc/PID/stat.
PORTCULLIS_LOG__LEVEL=warn \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/data" --listen "127.0.0.1:$PORT" >"$TMP/server.log" 2>&1 &
SERVER_PID=$!

deadline=$((SECONDS + 30))
until [[ "$(curl -s --max-time 1 "$BASE/healthz" || true)" == *'"status":"ok"'* ]]; do
    if ! kill -0 "$SERVER_PID" 2>/dev/null || (( SECONDS > deadline )); then
        echo "the server did not come up on $BASE" >&2
        cat "$TMP/server.log" >&2 || true
        exit 1
    fi
    sleep 0.1
done
exe=$(readlink "/proc/$SERVER_PID/exe" || true)
if [[ "$exe" != "$PORTCULLIS_BIN" ]]; then
    echo "pid $SERVER_PID is $exe, not the server binary" >&2
    exit 1
fi

status=$(curl -s -o "$TMP/signup.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "{\"email\":\"$EMAIL\",\"password\":\"$PASSWORD\",\"display_name\":\"Bench\"}" "$BASE/v1/auth/signup")
if [[ "$status" != 202 ]]; then
    echo "signup answered $status: $(cat "$TMP/signup.json")" >&2; exit 1
fi
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
# utime + stime of a process, in clock ticks (fields 14 and 15; the comm field may hold spaces).
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    awk '{ print $12 + $13 }' <<<"$stat"
}

# A wrk latency value (e.g. 812.00us, 1.23ms, 2.00s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
        else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
        else { printf "nan" }
    }'
}

declare -A RPS P99 CPU_US ERRORS
run_wrk() { # name duration -> prints wrk output
    case "$1" in
        me) timeout $(( $2 + 15 )) wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency \
                -H "Authorization: Bearer $TOKEN" "$BASE/v1/me" ;;
        healthz) timeout $(( $2 + 15 )) wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency "$BASE/healthz" ;;
    esac
}

echo "== warmup ${WARMUP}s each" >&2
for name in "${NAMES[@]}"; do run_wrk "$name" "$WARMUP" >/dev/null; done

for (( round = 0; round < ROUNDS; round++ )); do
    for (( i = 0; i < ${#NAMES[@]}; i++ )); do
        name=${NAMES[$(( (i + round) % ${#NAMES[@]} ))]}
        before=$(cpu_ticks "$SERVER_PID")
        output=$(run_wrk "$name" "$DURATION")
        after=$(cpu_ticks "$SERVER_PID")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$output")
        requests=$(awk '/requests in/ { print $1 }' <<<"$output")
        p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$output")")
        errors=$(awk '/Socket errors|Non-2xx/ { printf "%s; ", $0 }' <<<"$output")
        if [[ -z "$rps" || -z "$requests" || "$requests" == 0 ]]; then
            echo "wrk against $name gave no result:" >&2; echo "$output" >&2; exit 1
        fi
        # A 401 (say, an expired token) would be a fast answer that is not the thing measured.
        if grep -q 'Non-2xx' <<<"$output"; then
            echo "wrk against $name got non-2xx answers:" >&2; echo "$output" >&2; exit 1
        fi
        cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        RPS[$name]+="$rps "
        P99[$name]+="$p99 "
        CPU_US[$name]+="$cpu_us "
        if [[ -n "$errors" ]]; then ERRORS[$name]+="round $((round + 1)): $errors"; fi
        printf '   round %d  %-8s %10s req/s  p99 %8s ms  cpu %7s us/req\n' \
            $((round + 1)) "$name" "$rps" "$p99" "$cpu_us" >&2
    done
done

median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

declare -A M_RPS M_P99 M_CPU
for name in "${NAMES[@]}"; do
    M_RPS[$name]=$(median "${RPS[$name]}")
    M_P99[$name]=$(median "${P99[$name]}")
    M_CPU[$name]=$(median "${CPU_US[$name]}")
done

# --- report ----------------------------------------------------------------------------------------
stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
mkdir -p "$OUT_DIR"
report="$OUT_DIR/me-$stamp.md"
{
    echo "# GET /v1/me (bearer token) vs GET /healthz on the same server ($stamp)"
    echo
    echo "\`wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\`, $ROUNDS rounds per target (alternating), medians;"
    echo "release server, PORTCULLIS_LOG__LEVEL=warn, SQLite; server CPU = utime+stime of the server process per"
    echo "request. Loopback only. Host: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo '?');"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '-')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)'); $(rustc --version 2>/dev/null || true)."
    echo
    echo "| target | req/s | p99 (ms) | server CPU (µs/req) | rps vs healthz | CPU/req vs healthz |"
    echo "|---|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | ${M_RPS[$name]} | ${M_P99[$name]} | ${M_CPU[$name]} | $(ratio "${M_RPS[$name]}" "${M_RPS[healthz]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[healthz]}") |"
    done
    echo
    echo "Raw per-round values (req/s; p99 ms; CPU µs/req):"
    echo
    for name in "${NAMES[@]}"; do
        echo "- $name: ${RPS[$name]% }; ${P99[$name]% }; ${CPU_US[$name]% }"
        if [[ -n "${ERRORS[$name]:-}" ]]; then echo "  - wrk reported: ${ERRORS[$name]}"; fi
    done
} >"$report"

echo
printf '%-8s %10s %9s %12s %12s %12s\n' target 'req/s' 'p99(ms)' 'cpu(us/req)' 'rps/healthz' 'cpu/healthz'
for name in "${NAMES[@]}"; do
    printf '%-8s %10s %9s %12s %12s %12s\n' "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[healthz]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[healthz]}")"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "   wrk reported for $name: ${ERRORS[$name]}"; fi
done
echo
echo "written: ${report#"$ROOT"/}"
