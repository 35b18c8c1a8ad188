# shellcheck shell=bash
# The shared parts of the load benchmarks in scripts/bench/ (healthz.sh, login.sh, me.sh): wrk and
# the release build, servers started so that their pid is the server's own (the CPU figures read
# /proc/PID/stat), the wrk rounds of the one-URL targets, the figures' arithmetic and the report's
# header lines. It lives outside scripts/bench/ because scripts/bench/report runs every
# scripts/bench/*.sh. Sourced by each load script once it is in the repository root, $ROOT:
#
#   . scripts/lib/bench.sh
#   bench_budget "$seconds" "ROUNDS=$ROUNDS ..."   # exits 2 when the run would take over ~3 minutes
#   bench_tools curl getconf awk sort              # installs wrk when missing; sets CLK_TCK
#   bench_build --example bare_axum                # sets TARGET_DIR and PORTCULLIS_BIN
#   bench_tmp portcullis-bench                     # sets TMP; on exit stops the servers, removes TMP
#   bench_start "$TMP/a.log" env A=1 "$PORTCULLIS_BIN" serve ...   # sets BENCH_PID
#   bench_wait_up ...; bench_check_exe ...         # up, and BENCH_PID is the server, not a wrapper
#   bench_report_file healthz                      # sets stamp and report
#   bench_written                                  # the "written: <path>" last line
#
# bench_start runs its command directly (`env` sets variables and execs the server), so BENCH_PID
# is the server's own pid, whose CPU time cpu_ticks reads.
#
# bench_wrk_rounds WIDTH [--fail-on-non-2xx] is the measurement of the one-URL targets (healthz.sh,
# me.sh): the script defines `run_wrk NAME SECONDS` (one bench_wrk run against target NAME) and
# PID[NAME] (the server whose CPU that target costs). Each target gets a WARMUP-second run, then
# each round a DURATION-second run, order rotated per round; RPS, P99 and CPU_US hold one figure a
# round (space-separated), ERRORS what wrk reported besides, M_RPS, M_P99 and M_CPU the medians.
# Each run is printed to stderr with the target's name padded to WIDTH columns; with
# --fail-on-non-2xx, a run that got any non-2xx answer ends the script (exit 1).

CLK_TCK=
TARGET_DIR=
PORTCULLIS_BIN=
TMP=
BENCH_PID=
BENCH_PIDS=()

# Exits 2 when the run's estimate $1 (seconds, build excluded) is over 200 s; $2 names the knobs.
bench_budget() {
  if (( $1 > 200 )); then
    echo "$2 would take ~${1}s; keep it under ~3 minutes" >&2
    exit 2
  fi
}

# Installs wrk via apt if missing, exits 2 if a tool named is not on PATH, and sets CLK_TCK.
bench_tools() {
  local sudo="" tool
  if ! command -v wrk >/dev/null 2>&1; then
    echo "== installing wrk" >&2
    if (( EUID != 0 )) && command -v sudo >/dev/null 2>&1; then sudo=sudo; fi
    if ! $sudo apt-get install -y wrk >/dev/null; then
      $sudo apt-get update >/dev/null && $sudo apt-get install -y wrk >/dev/null
    fi
  fi
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "missing tool: $tool" >&2; exit 2; }
  done
  CLK_TCK=$(getconf CLK_TCK)
}

# Builds the release server plus the targets named (e.g. --example x); sets TARGET_DIR, PORTCULLIS_BIN.
# shellcheck disable=SC2120 # the arguments are optional (me.sh passes none)
bench_build() {
  echo "== cargo build --release -p portcullis --bin portcullis${*:+ $*}" >&2
  cargo build --release -p portcullis --bin portcullis "$@" >&2
  TARGET_DIR=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
  TARGET_DIR=${TARGET_DIR:-$ROOT/target}
  # shellcheck disable=SC2034 # for the scripts
  PORTCULLIS_BIN="$TARGET_DIR/release/portcullis"
}

# Makes TMP (/tmp/$1.XXXXXX); on any exit (error, SIGINT, SIGTERM) bench_cleanup runs.
bench_tmp() {
  TMP=$(mktemp -d "/tmp/$1.XXXXXX")
  trap bench_cleanup EXIT
  trap 'exit 130' INT TERM
}

# Stops every server bench_start started and removes TMP (the EXIT trap of bench_tmp).
bench_cleanup() {
  local pid
  for pid in "${BENCH_PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ -n "$TMP" ]]; then
    rm -rf "$TMP"
  fi
}

# Exits 2 with the message $2 when something already answers HTTP at URL $1.
bench_port_free() {
  if curl -s -o /dev/null --max-time 1 "$1"; then
    echo "$2" >&2
    exit 2
  fi
}

# Runs the command $2... in the background, output to the file $1, no wrapper shell; sets BENCH_PID.
bench_start() {
  local log=$1
  shift
  "$@" >"$log" 2>&1 &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
}

# Waits 30 s for pid $1 to answer "status":"ok" at $2, else prints $3 and the logs $4... and exits 1.
bench_wait_up() {
  local pid=$1 url=$2 message=$3 deadline=$((SECONDS + 30))
  shift 3
  until [[ "$(curl -s --max-time 1 "$url" || true)" == *'"status":"ok"'* ]]; do
    if ! kill -0 "$pid" 2>/dev/null || (( SECONDS > deadline )); then
      echo "$message" >&2
      cat "$@" >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.1
  done
}

# Exits 1 unless pid $1 (of server $2, if named) runs one of the binaries $3..., not a wrapper.
bench_check_exe() {
  local exe bin
  exe=$(readlink "/proc/$1/exe" || true)
  for bin in "${@:3}"; do
    if [[ "$exe" == "$bin" ]]; then
      return 0
    fi
  done
  echo "pid $1${2:+ of $2} is $exe, not the server binary" >&2
  exit 1
}

# Signs up account $2, password $3 at base URL $1; exits 1 unless 202 (naming server $4, if given).
bench_signup() {
  local status
  status=$(curl -s -o "$TMP/signup.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    -d "{\"email\":\"$2\",\"password\":\"$3\",\"display_name\":\"Bench\"}" "$1/v1/auth/signup")
  if [[ "$status" != 202 ]]; then
    echo "signup${4:+ on $4} answered $status: $(cat "$TMP/signup.json")" >&2
    exit 1
  fi
}

# utime + stime of pid $1, in clock ticks (fields 14 and 15; the comm field may hold spaces).
cpu_ticks() {
  local stat
  stat=$(<"/proc/$1/stat")
  stat=${stat##*) }
  # After "comm) ", field 3 (state) is the first word: utime/stime are words 12 and 13.
  awk '{ print $12 + $13 }' <<<"$stat"
}

# A wrk latency value (e.g. 812.00us, 1.23ms, 2.00s) in milliseconds, or "nan".
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (v ~ /us$/) { sub(/us$/, "", v); printf "%.4f", v / 1000 }
    else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.4f", v }
    else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.4f", v * 1000 }
    else { printf "nan" }
  }'
}

# The median of the figures in $1 with $2 decimals (default 2), "nan" left out, 0 if none is left.
median() {
  tr ' ' '\n' <<<"$1" | awk 'NF && $1 != "nan"' | sort -g | awk -v d="${2:-2}" '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.*f", d, v[(NR + 1) / 2]; else printf "%.*f", d, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# $1 / $2 with three decimals.
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'
}

# One wrk run of $1 seconds, 1 thread, CONNECTIONS connections, --latency; then wrk's args (-H, URL).
bench_wrk() {
  timeout $(( $1 + 15 )) wrk -t1 -c"$CONNECTIONS" -d"$1"s --latency "${@:2}"
}

# The report line stating bench_wrk's settings and the rounds.
bench_wrk_line() {
  echo "\`wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency\`, $ROUNDS rounds per target (alternating), medians;"
}

# Warmup, then ROUNDS rotated run_wrk runs of each of NAMES: fills RPS P99 CPU_US ERRORS, M_* medians.
bench_wrk_rounds() {
  local width=$1 fail_on_non_2xx=${2:-} round i name before after output rps requests p99 errors cpu_us
  declare -gA RPS P99 CPU_US ERRORS M_RPS M_P99 M_CPU
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
      if [[ "$fail_on_non_2xx" == --fail-on-non-2xx ]] && grep -q 'Non-2xx' <<<"$output"; then
        echo "wrk against $name got non-2xx answers:" >&2; echo "$output" >&2; exit 1
      fi
      cpu_us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
      RPS[$name]+="$rps "
      P99[$name]+="$p99 "
      CPU_US[$name]+="$cpu_us "
      if [[ -n "$errors" ]]; then ERRORS[$name]+="round $((round + 1)): $errors"; fi
      printf '   round %d  %-*s %10s req/s  p99 %8s ms  cpu %7s us/req\n' \
        $((round + 1)) "$width" "$name" "$rps" "$p99" "$cpu_us" >&2
    done
  done

  # shellcheck disable=SC2034 # for the scripts
  for name in "${NAMES[@]}"; do
    M_RPS[$name]=$(median "${RPS[$name]}")
    M_P99[$name]=$(median "${P99[$name]}")
    M_CPU[$name]=$(median "${CPU_US[$name]}")
  done
}

# The report's raw per-round figures of the bench_wrk_rounds targets, and what wrk reported besides.
bench_wrk_raw() {
  local name
  echo "Raw per-round values (req/s; p99 ms; CPU µs/req):"
  echo
  for name in "${NAMES[@]}"; do
    echo "- $name: ${RPS[$name]% }; ${P99[$name]% }; ${CPU_US[$name]% }"
    if [[ -n "${ERRORS[$name]:-}" ]]; then echo "  - wrk reported: ${ERRORS[$name]}"; fi
  done
}

# The CPU's model name from /proc/cpuinfo ("?" when it cannot be read).
cpu_model() {
  awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || echo '?'
}

# The report's "Host: <cores> cores, <CPU model>;".
bench_host() {
  echo "Host: $(nproc) cores, $(cpu_model);"
}

# The report's "commit <short hash>[ (dirty)]; <rustc --version>." line: what was measured.
bench_commit_line() {
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '-')$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)'); $(rustc --version 2>/dev/null || true)."
}

# Sets stamp (the run's UTC time) and report, the Markdown file scripts/bench/out/$1-<stamp>.md.
bench_report_file() {
  stamp=$(date -u +%Y-%m-%dT%H%M%SZ)
  mkdir -p "$ROOT/scripts/bench/out"
  report="$ROOT/scripts/bench/out/$1-$stamp.md"
}

# The load script's last line, from which scripts/bench/report takes the path of the table.
bench_written() {
  echo "written: ${report#"$ROOT"/}"
}
