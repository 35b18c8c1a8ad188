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
OUT_DIR="$ROOT/scripts/bench/out"
cd "$ROOT"

# Bound the whole run (the build excluded): 4 targets x ROUNDS x DURATION, warmups, startup.
budget=$(( ROUNDS * 4 * (DURATION + 1) + WARMUP * 4 + 30 ))
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
for tool in curl getconf awk sort; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing tool: $tool" >&2; exit 2; }
done
CLK_TCK=$(getconf CLK_TCK)

echo "== cargo build --release -p portcullis --bin portcullis --example bare_axum" >&2
cargo build --release -p portcullis --bin portcullis --example bare_axum >&2
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
TARGET_DIR=${TARGET_DIR:-$ROOT/target}
PORTCULLIS_BIN="$TARGET_DIR/release/portcullis"
BARE_BIN="$TARGET_DIR/release/examples/bare_axum"

# --- servers ---------------------------------------------------------------------------------------
NAMES=(portcullis-warn portcullis-json bare bare-headers)
declare -A PORT PID
PORT[portcullis-warn]=$PORT_BASE
PORT[portcullis-json]=$((PORT_BASE + 1))
PORT[bare]=$((PORT_BASE + 2))
PORT[bare-headers]=$((PORT_BASE + 3))
TMP=$(mktemp -d /tmp/portcullis-bench.XXXXXX)

cleanup() {
    local name
    for name in "${NAMES[@]}"; do
        if [[ -n "${PID[$name]:-}" ]]; then
            kill "${PID[$name]}" 2>/dev/null || true
            wait "${PID[$name]}" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for name in "${NAMES[@]}"; do
    if curl -s -o /dev/null --max-time 1 "http://127.0.0.1:${PORT[$name]}/"; then
        echo "port ${PORT[$name]} is already in use; set PORT_BASE" >&2
        exit 2
    fi
done

mkdir -p "$TMP/warn" "$TMP/json"
# Started directly (no wrapper shell), so $! is the server's own pid for /proc/PID/stat.
PORTCULLIS_LOG__LEVEL=warn \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/warn" --listen "127.0.0.1:${PORT[portcullis-warn]}" \
    >"$TMP/warn.log" 2>&1 &
PID[portcullis-warn]=$!
PORTCULLIS_LOG__LEVEL=info PORTCULLIS_LOG__FORMAT=json \
    "$PORTCULLIS_BIN" serve --data-dir "$TMP/json" --listen "127.0.0.1:${PORT[portcullis-json]}" \
    >/dev/null 2>/dev/null &
PID[portcullis-json]=$!
"$BARE_BIN" "127.0.0.1:${PORT[bare]}" >"$TMP/bare.log" 2>&1 &
PID[bare]=$!
"$BARE_BIN" "127.0.0.1:${PORT[bare-headers]}" headers >"$TMP/bare-headers.log" 2>&1 &
PID[bare-headers]=$!

url() { echo "http://127.0.0.1:${PORT[$1]}/healthz"; }

for name in "${NAMES[@]}"; do
    deadline=$((SECONDS + 30))
    until [[ "$(curl -s --max-time 1 "$(url "$name")" || true)" == *'"status":"ok"'* ]]; do
        if ! kill -0 "${PID[$name]}" 2>/dev/null || (( SECONDS > deadline )); then
            echo "$name did not come up on $(url "$name")" >&2
            cat "$TMP"/*.log >&2 2>/dev/null || true
            exit 1
        fi
        sleep 0.1
    done
    # The CPU accounting below reads this pid: it must be the server itself, not a wrapper shell.
    exe=$(readlink "/proc/${PID[$name]}/exe" || true)
    if [[ "$exe" != "$PORTCULLIS_BIN" && "$exe" != "$BARE_BIN" ]]; then
        echo "pid ${PID[$name]} of $name is $exe, not the server binary" >&2
        exit 1
    fi
done
echo "== servers up: $(for n in "${NAMES[@]}"; do printf '%s=pid %s ' "$n" "${PID[$n]}"; done)" >&2

# --- measurement -----------------------------------------------------------------------------------
# utime + stime of a process, in clock ticks (fields 14 and 15; the comm field may hold spaces).
cpu_ticks() {
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # After "comm) ", field 3 (state) is the first word: utime/stime are words 12 and 13.
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
    timeout $(( $2 + 15 )) wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency "$(url "$1")"
}

echo "== warmup ${WARMUP}s each" >&2
for name in "${NAMES[@]}"; do run_wrk "$name" "$WARMUP" >/dev/null; done

for (( round = 0; round < ROUNDS; round++ )); do
    for (( i = 0; i < ${#NAMES[@]}; i++ )); do
        name=${NAMES[$(( (i + round) % ${#NAMES[@]} ))]}
        before=$(cpu_ticks "${PID[$name]}")
        output=$(run_wrk "$name" "$DURATION")
        after=$(cpu_ticks "${PID[$name]}")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$output")
        requests=$(awk '/requests in/ { print $1 }' <<<"$output")
        p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$output")")
        errors=$(awk '/Socket errors|Non-2xx/ { printf "%s; ", $0 }' <<<"$output")
        if [[ -z "$rps" || -z "$requests" || "$requests" == 0 ]]; then
            echo "wrk against $name gave no result:" >&2; echo "$output" >&2; exit 1
        fi
        cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
        RPS[$name]+="$rps "
        P99[$name]+="$p99 "
        CPU_US[$name]+="$cpu_us "
        if [[ -n "$errors" ]]; then ERRORS[$name]+="round $((round + 1)): $errors"; fi
        printf '   round %d  %-16s %10s req/s  p99 %8s ms  cpu %7s us/req\n' \
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
report="$OUT_DIR/healthz-$stamp.md"
{
    echo "# /healthz: Portcullis vs bare axum ($stamp)"
    echo
    echo "\`wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\`, $ROUNDS rounds per target (alternating), medians;"
    echo "server CPU = utime+stime of the server process per request. Loopback only."
    echo "Host: $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo '?');"
    echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '-')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)'); $(rustc --version 2>/dev/null || true)."
    echo
    echo "| target | req/s | p99 (ms) | server CPU (µs/req) | rps vs bare | CPU/req vs bare | rps vs bare-headers | CPU/req vs bare-headers |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    for name in "${NAMES[@]}"; do
        echo "| $name | ${M_RPS[$name]} | ${M_P99[$name]} | ${M_CPU[$name]} | $(ratio "${M_RPS[$name]}" "${M_RPS[bare]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[bare]}") | $(ratio "${M_RPS[$name]}" "${M_RPS[bare-headers]}") | $(ratio "${M_CPU[$name]}" "${M_CPU[bare-headers]}") |"
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
printf '%-16s %10s %9s %12s %10s %10s %12s %12s\n' target 'req/s' 'p99(ms)' 'cpu(us/req)' 'rps/bare' 'cpu/bare' 'rps/bare+h' 'cpu/bare+h'
for name in "${NAMES[@]}"; do
    printf '%-16s %10s %9s %12s %10s %10s %12s %12s\n' "$name" "${M_RPS[$name]}" "${M_P99[$name]}" "${M_CPU[$name]}" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[bare]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[bare]}")" \
        "$(ratio "${M_RPS[$name]}" "${M_RPS[bare-headers]}")" "$(ratio "${M_CPU[$name]}" "${M_CPU[bare-headers]}")"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "   wrk reported for $name: ${ERRORS[$name]}"; fi
done
echo
echo "written: ${report#"$ROOT"/}"
