# shellcheck shell=bash
# A throwaway PostgreSQL cluster for tests, started as shared/TOOLS.md describes ("A throwaway
# PostgreSQL as root"): trust authentication on 127.0.0.1 only, a free port, everything in one
# temporary directory that pg_stop removes. Sourced by .ci/run and scripts/test-postgres:
#
#   . scripts/lib/pg.sh
#   pg_stop_on_exit      # before pg_start, so a half-started cluster is cleaned up too
#   pg_start             # exports PORTCULLIS_TEST_POSTGRES_URL

PG_VERSION=15
PG_BIN=
PG_DIR=

# The server binaries: Debian's PostgreSQL 15, which the project is tested on, else the newest
# packaged version (a Debian release after bookworm ships a later one under the same package name).
pg_bin_dir() {
  local dir
  if [ -x "/usr/lib/postgresql/$PG_VERSION/bin/initdb" ]; then
    echo "/usr/lib/postgresql/$PG_VERSION/bin"
    return 0
  fi
  for dir in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V -r); do
    if [ -x "$dir/initdb" ]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# Installs the server from Debian's packages when it is missing (CI starts on a machine that may
# have nothing). Touches apt only when something must be installed.
pg_install() {
  if pg_bin_dir >/dev/null; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "pg.sh: PostgreSQL server binaries are missing; install the 'postgresql' package" >&2
    return 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql
  pg_bin_dir >/dev/null
}

# Runs a command line as the cluster's owner: initdb and pg_ctl refuse to run as root.
_pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    su postgres -c "$1"
  else
    sh -c "$1"
  fi
}

# The first port from 55432 on where nothing on 127.0.0.1 answers.
_pg_free_port() {
  local port
  for port in $(seq 55432 55631); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  echo "pg.sh: no free port in 55432-55631" >&2
  return 1
}

pg_start() {
  local port
  PG_BIN=$(pg_bin_dir) || {
    echo "pg.sh: no PostgreSQL server binaries under /usr/lib/postgresql (see pg_install)" >&2
    return 1
  }
  port=$(_pg_free_port)
  # The path is spliced into command lines below, so it must stay free of spaces and quotes.
  PG_DIR=$(mktemp -d /tmp/portcullis-pg.XXXXXX)
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$PG_DIR"
  fi
  if ! _pg_as_owner "$PG_BIN/initdb -D $PG_DIR/data -A trust -U postgres --no-sync -E UTF8 >$PG_DIR/initdb.log 2>&1"; then
    echo "pg.sh: initdb failed:" >&2
    cat "$PG_DIR/initdb.log" >&2
    return 1
  fi
  # The socket goes in our own directory (-k) rather than /var/run/postgresql, which may not exist.
  if ! _pg_as_owner "$PG_BIN/pg_ctl -D $PG_DIR/data -l $PG_DIR/log -w -o '-p $port -k $PG_DIR -c listen_addresses=127.0.0.1' start >/dev/null"; then
    echo "pg.sh: PostgreSQL did not start:" >&2
    cat "$PG_DIR/log" >&2 || true
    return 1
  fi
  export PORTCULLIS_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
  echo "pg.sh: PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($PG_DIR)"
}

# Stops the cluster and removes its directory. Never fails, so that as an EXIT trap it leaves the
# script's own exit status alone.
pg_stop() {
  if [ -z "${PG_DIR:-}" ]; then
    return 0
  fi
  if [ -f "$PG_DIR/data/postmaster.pid" ]; then
    _pg_as_owner "$PG_BIN/pg_ctl -D $PG_DIR/data -m fast -w stop >/dev/null" ||
      echo "pg.sh: pg_ctl stop failed; the server log is in $PG_DIR/log" >&2
  fi
  if [ ! -f "$PG_DIR/data/postmaster.pid" ]; then
    rm -rf "$PG_DIR" || true
  fi
  PG_DIR=
}

# Stops the cluster however the script ends: normally, on an error under `set -e`, or on Ctrl-C
# or SIGTERM (turned into an exit, which runs the EXIT trap).
pg_stop_on_exit() {
  trap pg_stop EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
