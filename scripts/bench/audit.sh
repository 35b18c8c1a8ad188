#!/usr/bin/env bash
# Audit trail throughput (issue 8): crates/app/benches/audit.rs in release, on SQLite and, when the
# PostgreSQL server binaries are installed, on a throwaway PostgreSQL cluster (scripts/lib/pg.sh).
# Events appended per second with chaining under 32 concurrent writers through the group-commit
# writer, against one writer (every event its own commit) and against 32 writers committing one
# event per transaction (the state-change path); then `audit verify` over a 1,000,000-event SQLite
# log (200,000 on PostgreSQL) in events per second, with peak RSS. Each figure comes with the CPU
# per event (the bench process; SQLite's writer thread; the PostgreSQL server's processes).
#
# Not HTTP: the appends go through `App` directly, as the server's use cases do. The defaults fit
# scripts/bench/report's ~3 minute budget (one round, one verification); docs/benchmarks.md reports
# a longer run (ROUNDS=3 VERIFY_ROUNDS=5 COUNT=1), made with the bench command directly:
#
#   bash -c '. scripts/lib/pg.sh; pg_stop_on_exit; pg_start; cargo bench -p portcullis-app --bench audit'
#
# Usage: scripts/bench/audit.sh       (ROUNDS=1 VERIFY_ROUNDS=1 COUNT=0 POSTGRES=1 by default)
# Env:   ROUNDS, VERIFY_ROUNDS, COUNT (1: the extra SQLite run that counts events per commit),
#        POSTGRES (0: SQLite only), AUDIT_BENCH_DIR (where the SQLite files go; default /tmp)
# Out:   the tables on stdout and scripts/bench/out/audit-<date>.md
set -euo pipefail

ROUNDS=${ROUNDS:-1}
VERIFY_ROUNDS=${VERIFY_ROUNDS:-1}
COUNT=${COUNT:-0}
POSTGRES=${POSTGRES:-1}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
# shellcheck source=scripts/lib/bench.sh
. scripts/lib/bench.sh
# shellcheck source=scripts/lib/pg.sh
. scripts/lib/pg.sh

# Seconds, from runs on the shared 2-core machine: SQLite ~35 s a round (+25 s counted), filling the
# 1M-event log 70-100 s, ~10 s a verification, ~7 s appending to the full log; PostgreSQL ~15 s a
# round, ~15 s to fill, <1 s to verify, ~2 s to append.
estimate=$(( ROUNDS * 35 + COUNT * 25 + 107 + VERIFY_ROUNDS * 10 ))
if [[ "$POSTGRES" == 1 ]]; then
  estimate=$(( estimate + ROUNDS * 15 + 17 + VERIFY_ROUNDS ))
fi
bench_budget "$estimate" "ROUNDS=$ROUNDS VERIFY_ROUNDS=$VERIFY_ROUNDS COUNT=$COUNT POSTGRES=$POSTGRES"

echo "== cargo bench -p portcullis-app --bench audit --no-run" >&2
cargo bench -p portcullis-app --bench audit --no-run >&2

backends=sqlite
if [[ "$POSTGRES" == 1 ]]; then
  if pg_bin_dir >/dev/null; then
    pg_stop_on_exit
    pg_start >&2
    backends=sqlite,postgres
  else
    echo "audit.sh: no PostgreSQL server binaries (see scripts/lib/pg.sh); SQLite only" >&2
  fi
fi

bench_report_file audit
out=$(mktemp)
trap 'rm -f "$out"; pg_stop' EXIT
AUDIT_BENCH_BACKENDS=$backends AUDIT_BENCH_ROUNDS=$ROUNDS AUDIT_BENCH_VERIFY_ROUNDS=$VERIFY_ROUNDS \
  AUDIT_BENCH_NO_COUNT=$(( 1 - COUNT )) \
  cargo bench -q -p portcullis-app --bench audit | tee "$out" >&2

{
  echo "# Audit trail: appends and verification ($stamp)"
  echo
  echo "\`crates/app/benches/audit.rs\` (release), ROUNDS=$ROUNDS VERIFY_ROUNDS=$VERIFY_ROUNDS; backends: $backends."
  bench_host
  bench_commit_line
  echo
  # The bench's own headings become subsections of this one; its title line is dropped.
  sed -e '/^# Audit trail throughput/d' -e 's/^## /#### /' "$out"
} >"$report"

echo
bench_written
