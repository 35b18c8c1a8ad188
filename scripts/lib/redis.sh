# Sourced helper: a throwaway Redis for the rate limit suites that run on Redis.
#   redis_install   installs Debian's redis-server when it is missing (the only network use: apt)
#   redis_start     starts one on a free loopback port, nothing persisted; exports
#                   PORTCULLIS_TEST_REDIS_URL
#   redis_stop      stops it (never fails, so it can run from an EXIT trap)
# Callers that also use scripts/lib/pg.sh stop both from one EXIT trap (see .ci/run).

REDIS_PID=

redis_install() {
  if command -v redis-server >/dev/null 2>&1; then
    return
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server
}

redis_start() {
  local port
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
    --loglevel warning >/dev/null 2>&1 &
  REDIS_PID=$!
  local tries=0
  until redis-cli -p "$port" ping >/dev/null 2>&1; do
    tries=$((tries + 1))
    if ((tries > 50)); then
      echo "redis-server did not answer on 127.0.0.1:$port" >&2
      return 1
    fi
    sleep 0.1
  done
  export PORTCULLIS_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
  # The Redis halves of the rate limit suites fail instead of skipping from here on.
  export PORTCULLIS_REQUIRE_REDIS=1
  echo "redis on 127.0.0.1:$port" >&2
}

redis_stop() {
  if [[ -n "$REDIS_PID" ]]; then
    kill "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    REDIS_PID=
  fi
}
