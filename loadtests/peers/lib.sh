# Shared helpers for the benchmark scripts: start and stop each server under test, pinned to
# a CPU with taskset. Source it; every server runs on 127.0.0.1 only.
#
#   SERVER_CPU   CPU list for the server (default 1)      GEN_CPU  CPU list for the generator (default 0)
#   CHATTY_BIN   chatty binary (default <repo>/target/release/chatty)
#   PG_BASE      PostgreSQL URL without the database (default postgres://postgres@127.0.0.1:5432)
#   BENCH_NICE   nice level of the server, the generator and the benchmark database's backends
#                (default -10 as root, 0 otherwise): on a shared machine other people's builds
#                run at 0, and a short benchmark should not be time-sliced against them.

LT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$LT_DIR/.." && pwd)"
SERVER_CPU="${SERVER_CPU:-1}"
GEN_CPU="${GEN_CPU:-0}"
CHATTY_BIN="${CHATTY_BIN:-$REPO_DIR/target/release/chatty}"
CHATTY_CONFIG_DIR="${CHATTY_CONFIG_DIR:-$REPO_DIR/config}"
PG_BASE="${PG_BASE:-postgres://postgres@127.0.0.1:5432}"
LOADTEST="$LT_DIR/target/release/chatty-loadtest"
SERVER_PID=""
RENICE_PID=""
if [ -z "${BENCH_NICE:-}" ]; then
    if [ "$(id -u)" = 0 ]; then BENCH_NICE=-10; else BENCH_NICE=0; fi
fi

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

build_loadtest() {
    (cd "$LT_DIR" && cargo build --release --locked -q)
}

# wait_http HOST:PORT PATH — until it answers 200 (at most 30 s).
wait_http() {
    local i
    for i in $(seq 1 300); do
        if curl -fsS -o /dev/null "http://$1$2" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "no answer from http://$1$2"; return 1
}

# wait_port PORT — until something listens (at most 30 s).
wait_port() {
    local i
    for i in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "nothing listens on $1"; return 1
}

# require_free PORT… — refuse to benchmark whatever else happens to listen there.
require_free() {
    local p
    for p in "$@"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            log "port $p is already in use on 127.0.0.1: stop that process or pick other ports"
            return 1
        fi
    done
}

# The server we started must be the one that answered.
require_alive() {
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "the server exited during startup; see ${SERVER_LOG:-its log}"
        return 1
    fi
}

# start_chatty PORT METRICS_PORT DB — a fresh database, persistence on.
# The admission caps are raised to what the load tests open: every generator connection comes
# from 127.0.0.1, so the default per-IP cap (2,000) would refuse most of them with HTTP 429.
# The generator mints one user per connection, so the per-user cap (default 50) is not reached
# today; it is raised too so that a scenario sharing users would not be silently capped.
start_chatty() {
    local port=$1 mport=$2 db=$3
    require_free "$port" "$mport"
    psql "$PG_BASE/postgres" -XAtq -c "drop database if exists $db" >/dev/null
    psql "$PG_BASE/postgres" -XAtq -c "create database $db" >/dev/null
    CHATTY_CONFIG_DIR="$CHATTY_CONFIG_DIR" \
    CHATTY__DATABASE__URL="$PG_BASE/$db" \
    CHATTY__SERVER__PORT="$port" \
    CHATTY__SERVER__METRICS_PORT="$mport" \
    CHATTY__LOG__LEVEL="${CHATTY_LOG_LEVEL:-warn}" \
    CHATTY__LIMITS__MESSAGES_PER_SECOND=100000 \
    CHATTY__LIMITS__MESSAGE_BURST=100000 \
    CHATTY__LIMITS__MAX_CONNECTIONS=19500 \
    CHATTY__LIMITS__MAX_CONNECTIONS_PER_IP=19500 \
    CHATTY__LIMITS__MAX_CONNECTIONS_PER_USER=19500 \
    env ${CHATTY_OUTBOUND_QUEUE:+CHATTY__LIMITS__OUTBOUND_QUEUE=$CHATTY_OUTBOUND_QUEUE} \
    ${CHATTY_WEBHOOKS_URL:+CHATTY__WEBHOOKS__URL=$CHATTY_WEBHOOKS_URL} \
    ${CHATTY_WEBHOOKS_URL:+CHATTY__WEBHOOKS__SECRET=loadtest-webhook-secret} \
    ${CHATTY_OTLP_ENDPOINT:+CHATTY__TELEMETRY__OTLP_ENDPOINT=$CHATTY_OTLP_ENDPOINT} \
    ${CHATTY_OTLP_ENDPOINT:+CHATTY__TELEMETRY__SAMPLE_RATIO=${TRACE_RATIO:-0.01}} \
        nice -n "$BENCH_NICE" taskset -c "$SERVER_CPU" "$CHATTY_BIN" serve >"${SERVER_LOG:-/dev/null}" 2>&1 &
    SERVER_PID=$!
    wait_http "127.0.0.1:$port" /readyz
    require_alive
    renice_db_backends "$db" &
    RENICE_PID=$!
}

# Give this database's PostgreSQL backends the benchmark's priority while the server runs
# (the pool opens connections lazily, so look again every second).
renice_db_backends() {
    [ "$BENCH_NICE" = 0 ] && return 0
    while kill -0 "$SERVER_PID" 2>/dev/null; do
        psql "$PG_BASE/postgres" -XAtq -c "select pid from pg_stat_activity where datname = '$1'" 2>/dev/null \
            | xargs -r renice -n "$BENCH_NICE" -p >/dev/null 2>&1 || true
        sleep 1
    done
}

start_bare() {
    require_free "$1"
    nice -n "$BENCH_NICE" taskset -c "$SERVER_CPU" "$LOADTEST" bare-server --port "$1" >"${SERVER_LOG:-/dev/null}" 2>&1 &
    SERVER_PID=$!
    wait_port "$1"
    require_alive
}

# start_nats — the WebSocket listener is on 8092 (peers/nats/nats.conf).
start_nats() {
    require_free 8092 14222
    nice -n "$BENCH_NICE" taskset -c "$SERVER_CPU" nats-server -c "$LT_DIR/peers/nats/nats.conf" >"${SERVER_LOG:-/dev/null}" 2>&1 &
    SERVER_PID=$!
    wait_port 8092
    require_alive
}

start_socketio() {
    require_free "$1"
    if [ ! -d "$LT_DIR/peers/socketio/node_modules" ]; then
        (cd "$LT_DIR/peers/socketio" && npm ci --no-audit --no-fund >/dev/null)
    fi
    (cd "$LT_DIR/peers/socketio" && exec nice -n "$BENCH_NICE" taskset -c "$SERVER_CPU" node server.js "$1") >"${SERVER_LOG:-/dev/null}" 2>&1 &
    SERVER_PID=$!
    wait_port "$1"
    require_alive
}

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local i
        for i in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
RENICE_PID=""
if [ -z "${BENCH_NICE:-}" ]; then
    if [ "$(id -u)" = 0 ]; then BENCH_NICE=-10; else BENCH_NICE=0; fi
fi
}

# loadtest ARGS… — the generator, pinned to GEN_CPU.
loadtest() {
    nice -n "$BENCH_NICE" taskset -c "$GEN_CPU" "$LOADTEST" "$@"
}

# What else is using the machine right now (recorded with each result).
machine_load() {
    echo "loadavg $(cut -d' ' -f1-3 /proc/loadavg); busiest: $(ps -eo pcpu,comm --sort=-pcpu --no-headers | head -3 | awk '{printf "%s %s%%, ", $2, $1}')"
}
