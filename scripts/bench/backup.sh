#!/usr/bin/env bash
# Backup and restore at size (issue 9): a SQLite database of 100,000 users and 1,000,000 audit events,
# `portcullis backup create`, then `portcullis backup restore --to sqlite:` into an empty file, each
# under /usr/bin/time -v: wall time, peak RSS (memory must stay flat whatever the table sizes: the
# dump streams), and the archive's size against the database file's.
#
# The rows are synthetic, written by sqlite3 (sealed fields are random bytes of realistic sizes, the
# audit events carry random hashes), so this measures the dump, the archive pipeline and the load;
# `backup verify` is not timed here because the synthetic chain does not verify (the audit bench,
# scripts/bench/audit.sh, times chain verification on a real 1M-event log).
#
# Usage: scripts/bench/backup.sh          (USERS=100000 EVENTS=1000000 by default)
# Env:   USERS, EVENTS, BENCH_DIR (where the files go; default a new folder under /tmp)
# Needs: sqlite3, age-keygen (apt: sqlite3 age), /usr/bin/time (apt: time)
set -euo pipefail

USERS=${USERS:-100000}
EVENTS=${EVENTS:-1000000}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DIR=${BENCH_DIR:-$(mktemp -d /tmp/portcullis-backup-bench.XXXX)}
mkdir -p "$DIR"

for tool in sqlite3 age-keygen /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "backup.sh: $tool is missing" >&2; exit 1; }
done

echo "== cargo build --release -p portcullis" >&2
cargo build --release -p portcullis >&2
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis

rm -rf "$DIR/data" "$DIR/restored.db"*
age-keygen -o "$DIR/key.txt" 2>"$DIR/key.pub"
RECIPIENT=$(grep -o 'age1[a-z0-9]*' "$DIR/key.pub")
export PORTCULLIS_DATA_DIR="$DIR/data"
export PORTCULLIS_LOG__LEVEL=warn
export PORTCULLIS_BACKUP__RECIPIENTS="[\"$RECIPIENT\"]"
export PORTCULLIS_BACKUP__IDENTITY_FILE="$DIR/key.txt"
"$BIN" migrate >/dev/null

echo "== seeding $USERS users and $EVENTS audit events" >&2
sqlite3 "$DIR/data/portcullis.db" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $USERS)
INSERT INTO users (id, email, email_index, index_key, email_verified_at, display_name, pii_key, status,
                   role, created_at, updated_at, last_login_at)
SELECT printf('%08x-0000-4000-8000-%012x', i, i), randomblob(60), randomblob(32), 'bidx-1',
       1700000000000 + i, randomblob(40), printf('pii-%d', i), 'active', 'member',
       1700000000000 + i, 1700000000000 + i, NULL
FROM n;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $EVENTS)
INSERT INTO audit_events (seq, id, at, actor_kind, actor_id, on_behalf_of, action, target_type, target_id,
                          organization_id, ip, user_agent, pii_key, request_id, outcome, details,
                          prev_hash, hash)
SELECT i, printf('ev-%012d', i), 1700000000000 + i, 'user', printf('%08x-0000-4000-8000-%012x', i % $USERS, i % $USERS),
       NULL, 'session.created', 'session', printf('s-%d', i), NULL, randomblob(28), randomblob(80),
       printf('pii-%d', i % $USERS), printf('req-%d', i), 'success', '{"mfa":false,"method":"password"}',
       randomblob(32), randomblob(32)
FROM n;
UPDATE audit_head SET seq = $EVENTS, hash = (SELECT hash FROM audit_events WHERE seq = $EVENTS);
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
db_bytes=$(stat -c %s "$DIR/data/portcullis.db")

# Runs a command under /usr/bin/time -v; prints "seconds peak-RSS-MiB".
measure() {
  /usr/bin/time -v "$@" >"$DIR/out.txt" 2>"$DIR/time.txt" || { cat "$DIR/out.txt" "$DIR/time.txt" >&2; exit 1; }
  local wall rss
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$DIR/time.txt")
  rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$DIR/time.txt")
  echo "$wall $rss"
}

echo "== backup create" >&2
read -r create_s create_mib < <(measure "$BIN" backup create)
id=$(awk '/^created / { print $2 }' "$DIR/out.txt")
archive_bytes=$(stat -c %s "$DIR/data/backups/$id.age")

echo "== backup restore --to sqlite:" >&2
read -r restore_s restore_mib < <(measure "$BIN" backup restore "$id" --to "sqlite:$DIR/restored.db")

cat <<OUT

| step | rows | wall time (s) | peak RSS (MiB) |
|---|---|---|---|
| backup create | $USERS users + $EVENTS audit events | $create_s | $create_mib |
| backup restore (SQLite) | same | $restore_s | $restore_mib |

database file: $((db_bytes / 1048576)) MiB; archive: $((archive_bytes / 1048576)) MiB ($(( archive_bytes * 100 / db_bytes ))% of the database)
files in $DIR
OUT
