#!/usr/bin/env bash
# Run every test suite of Chatty: the README's test command, and what CI runs.
#
# Services: PostgreSQL (and Redis, for the suites that need it) come from, in order:
#   1. CHATTY_TEST_DATABASE_URL / CHATTY_TEST_REDIS_URL, when set;
#   2. the local servers on 127.0.0.1:5432 / 127.0.0.1:6379, when they answer;
#   3. throwaway instances started here from the installed server binaries, in a temporary
#      directory, stopped on exit (the Debian packages `postgresql` and `redis-server` are
#      installed first when missing, as root or through passwordless sudo, with apt-get).
# A suite whose services cannot be had fails loudly; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test] %s\n' "$*" >&2; }
tmp=$(mktemp -d /tmp/chatty-test.XXXXXX)
started_pg=""
started_redis=""
cleanup() {
  if [ -n "$started_pg" ]; then
    log "stopping throwaway PostgreSQL"
    as_postgres "$started_pg/pg_ctl" -D "$tmp/pg" -m immediate stop >/dev/null 2>&1 || true
  fi
  if [ -n "$started_redis" ]; then
    log "stopping throwaway Redis"
    kill "$(cat "$tmp/redis.pid" 2>/dev/null)" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# As root, or through passwordless sudo (as on CI runners).
apt_install() {
  local sudo=()
  [ "$(id -u)" = 0 ] || { sudo -n true 2>/dev/null && sudo=(sudo -n); }
  if command -v apt-get >/dev/null && { [ "$(id -u)" = 0 ] || [ ${#sudo[@]} -gt 0 ]; }; then
    log "installing $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    log "missing $* and cannot install it (not root, no passwordless sudo, or no apt-get)"
    return 1
  fi
}

# PostgreSQL refuses to run as root: run its tools as the `postgres` user when we are root.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1; }

ensure_postgres() {
  if [ -n "${CHATTY_TEST_DATABASE_URL:-}" ]; then
    log "PostgreSQL: $CHATTY_TEST_DATABASE_URL (from the environment)"
    return
  fi
  if port_open 5432; then
    export CHATTY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432"
    log "PostgreSQL: the local server on 5432"
    return
  fi
  local bin; bin=$(pg_bin)
  if [ -z "$bin" ]; then apt_install postgresql; bin=$(pg_bin); fi
  [ -n "$bin" ] || { log "no PostgreSQL server binaries"; exit 1; }
  local port; port=$(free_port)
  mkdir -p "$tmp/pg"
  [ "$(id -u)" = 0 ] && chown -R postgres "$tmp" && chmod 755 "$tmp"
  as_postgres "$bin/initdb" -D "$tmp/pg" -U postgres --auth=trust >/dev/null
  as_postgres "$bin/pg_ctl" -D "$tmp/pg" -l "$tmp/pg.log" -w \
    -o "-p $port -k $tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
  started_pg="$bin"
  export CHATTY_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port"
  log "PostgreSQL: throwaway instance on $port"
}

ensure_redis() {
  if [ -n "${CHATTY_TEST_REDIS_URL:-}" ]; then
    log "Redis: $CHATTY_TEST_REDIS_URL (from the environment)"
    return
  fi
  if port_open 6379; then
    export CHATTY_TEST_REDIS_URL="redis://127.0.0.1:6379"
    log "Redis: the local server on 6379"
    return
  fi
  command -v redis-server >/dev/null || apt_install redis-server
  command -v redis-server >/dev/null || { log "no redis-server"; exit 1; }
  local port; port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$tmp/redis.pid" --dir "$tmp" --logfile "$tmp/redis.log"
  started_redis=1
  for _ in $(seq 50); do port_open "$port" && break; sleep 0.1; done
  export CHATTY_TEST_REDIS_URL="redis://127.0.0.1:$port"
  log "Redis: throwaway instance on $port"
}

# Test databases are named chatty_test_*; drop the ones earlier runs left behind.
drop_old_test_databases() {
  command -v psql >/dev/null || return 0
  psql "$CHATTY_TEST_DATABASE_URL/postgres" -Atqc \
    "select datname from pg_database where datname like 'chatty\_test\_%'" 2>/dev/null |
    while read -r db; do
      psql "$CHATTY_TEST_DATABASE_URL/postgres" -qc "drop database if exists \"$db\"" >/dev/null 2>&1 || true
    done
  # Application roles a failed run of tests/api/db_roles.rs left (they owned only those databases).
  psql "$CHATTY_TEST_DATABASE_URL/postgres" -Atqc \
    "select rolname from pg_roles where rolname like 'chatty\_test\_role\_%'" 2>/dev/null |
    while read -r role; do
      psql "$CHATTY_TEST_DATABASE_URL/postgres" -qc "drop role if exists \"$role\"" >/dev/null 2>&1 || true
    done
}

# The fault and cluster suites start private servers of their own (to stop, freeze or lose
# them), so the server binaries must be here even when the services come from elsewhere.
ensure_server_binaries() {
  [ -n "$(pg_bin)" ] || apt_install postgresql || true
  [ -n "$(pg_bin)" ] || { log "no PostgreSQL server binaries under /usr/lib/postgresql"; exit 1; }
  command -v redis-server >/dev/null || apt_install redis-server || true
  command -v redis-server >/dev/null || { log "no redis-server on PATH"; exit 1; }
}

ensure_server_binaries
ensure_postgres
ensure_redis
drop_old_test_databases

log "cargo test"
cargo test --workspace --locked

log "load generator: lints and unit tests (its own workspace)"
(cd loadtests && cargo clippy --all-targets --locked -- -D warnings && cargo test --locked)

log "browser end-to-end test (headless Chromium)"
e2e/run.sh

log "client package clients/js: type check, lint, the page's copy, tests against the real binary, the packed tarball"
# The release binary e2e/run.sh just built, and the browser it found or installed.
chatty_bin="${CHATTY_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/chatty}"
chromium="${CHATTY_E2E_CHROMIUM:-}"
if [ -z "$chromium" ]; then
  for candidate in /usr/bin/chromium /usr/bin/google-chrome /usr/bin/google-chrome-stable; do
    if [ -x "$candidate" ]; then chromium=$candidate; break; fi
  done
fi
(
  cd clients/js
  npm ci --no-audit --no-fund --loglevel=error
  npm run typecheck
  npm run lint
  npm run check-web
  CHATTY_BIN="$chatty_bin" CHATTY_E2E_CHROMIUM="$chromium" npm test
  CHATTY_BIN="$chatty_bin" npm run test:pack
)

log "WebSocket conformance (Autobahn|Testsuite against the real read path)"
scripts/autobahn.sh

log "deployment lints"
scripts/lint-deploy.sh
