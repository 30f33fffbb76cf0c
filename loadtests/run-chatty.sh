#!/usr/bin/env bash
# Chatty's own scenarios against the goals in docs/benchmarks.md, each on a fresh server with a
# fresh PostgreSQL database (persistence on). The server is pinned to SERVER_CPU, the generator
# to GEN_CPU (see peers/lib.sh); PostgreSQL runs where the kernel puts it.
#
#   loadtests/run-chatty.sh [OUT_DIR] [SCENARIO...]
#
# Scenarios: pg-baseline idle storm hot-room many-rooms durable slow-consumers mixed cluster
# (default: all but cluster, which needs CLUSTER_URLS="ws://...,ws://..." of running nodes).
# Rates (messages/s) can be set with HOT_RATES, MANY_RATES, DURABLE_RATES, SLOW_RATES, MIXED_RATES;
# DURATION (15), WARMUP (3), DRAIN (5).
# PRIVATE_ROOMS=1 makes many-rooms' rooms private (each with one member who never connects, so
# every message is one the inbox and webhooks are about); WEBHOOKS=blackhole turns webhooks on,
# pointed at a listener that accepts connections and never answers (every request times out).
# TRACE_RATIO=0.01 (say) turns tracing on at that sampling ratio, exported to a stand-in
# OTLP collector (`chatty-loadtest otlp-sink`); the runs' JSON then counts the spans exported.
#
# A scenario whose run is INVALID (planned connections refused or failed, connections closed by
# the server mid-run, a saturated generator: the generator exits 3) or that fails is recorded
# and the suite goes on; the script then exits non-zero (3: only INVALID runs, 1: a failure)
# and names them. Their tables and JSON are still written, marked INVALID.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/peers/lib.sh"

OUT="${1:-$LT_DIR/results/chatty-$(date -u +%Y%m%dT%H%M%SZ)}"
shift || true
SCENARIOS="${*:-pg-baseline idle storm hot-room many-rooms durable slow-consumers mixed}"
DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-3}"
DRAIN="${DRAIN:-5}"
DB=chatty_bench_suite
for s in $SCENARIOS; do
    case $s in
        pg-baseline|idle|storm|hot-room|many-rooms|durable|slow-consumers|mixed|cluster) ;;
        *) log "unknown scenario $s"; exit 2 ;;
    esac
done
mkdir -p "$OUT"
trap stop_server EXIT
INVALID=()
FAILED=()
# record SCENARIO STATUS — what the generator's exit status says about that scenario.
record() {
    case $2 in
        0) ;;
        3) INVALID+=("$1"); log "$1: INVALID, not a result (see $OUT/$1.table.md)" ;;
        *) FAILED+=("$1"); log "$1: failed with status $2" ;;
    esac
}

build_loadtest
[ -x "$CHATTY_BIN" ] || (cd "$REPO_DIR" && cargo build --release --locked -q)

if [ "${WEBHOOKS:-}" = blackhole ]; then
    # Accept, never read, never answer: the dispatcher's requests all time out.
    python3 -c '
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 18099)); s.listen(1024); held = []
while True:
    c, _ = s.accept(); held.append(c)
' &
    BLACKHOLE_PID=$!
    trap 'stop_server; kill $BLACKHOLE_PID 2>/dev/null || true' EXIT
    export CHATTY_WEBHOOKS_URL=http://127.0.0.1:18099/hook
fi

if [ -n "${TRACE_RATIO:-}" ]; then
    # Tracing on at this sampling ratio, exported to a stand-in collector on the generator's
    # CPU; its log (otlp-sink.log) shows what it took.
    nice -n "$BENCH_NICE" taskset -c "$GEN_CPU" "$LOADTEST" otlp-sink --port 18098 >"$OUT/otlp-sink.log" 2>&1 &
    SINK_PID=$!
    trap 'stop_server; kill $SINK_PID 2>/dev/null || true; kill ${BLACKHOLE_PID:-} 2>/dev/null || true' EXIT
    export CHATTY_OTLP_ENDPOINT=http://127.0.0.1:18098
fi

# PostgreSQL's own speed right now, as a reference for the durable numbers: one client doing
# one-row transactions (the commit floor), and 8 clients.
pg_baseline() {
    local db=chatty_bench_pgbench f
    psql "$PG_BASE/postgres" -XAtq -c "drop database if exists $db" -c "create database $db" >/dev/null
    psql "$PG_BASE/$db" -XAtq -c "create table t (id bigserial primary key, room text, body text)" >/dev/null
    f=$(mktemp)
    echo "insert into t (room, body) values ('r', repeat('x', 64));" >"$f"
    for c in 1 8; do
        echo "== pgbench: one-row insert transactions, $c client(s), 5 s; $(machine_load)"
        nice -n "$BENCH_NICE" pgbench -n -c "$c" -j "$c" -T 5 -f "$f" "$PG_BASE/$db" 2>&1 \
            | grep -E "latency average|tps ="
    done
    rm -f "$f"
    psql "$PG_BASE/postgres" -XAtq -c "drop database if exists $db" >/dev/null
}

for s in $SCENARIOS; do
    SERVER_LOG="$OUT/$s.server.log"
    if [ "$s" = pg-baseline ]; then
        pg_baseline | tee "$OUT/pg-baseline.txt"
        continue
    fi
    if [ "$s" = cluster ]; then
        [ -n "${CLUSTER_URLS:-}" ] || { log "cluster: set CLUSTER_URLS"; continue; }
        # These nodes run elsewhere: their per-IP cap (limits.max_connections_per_ip, 2,000 by
        # default) must allow CONNS from this machine, or the run is INVALID.
        rc=0
        loadtest run --scenario cluster --url "$CLUSTER_URLS" --conns "${CONNS:-5000}" \
            --rates "${HOT_RATES:-10,20}" --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
            --note "cluster: $CLUSTER_URLS; $(machine_load)" --out "$OUT/$s.json" --svg "$OUT/$s.svg" \
            | tee "$OUT/$s.table.md" || rc=$?
        record "$s" "$rc"
        continue
    fi
    start_chatty 18080 19090 "$DB"
    common=(--target chatty --url ws://127.0.0.1:18080/ws --server-pid "$SERVER_PID"
            --metrics-url http://127.0.0.1:19090/metrics --extra-cpu-comm postgres
            --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN"
            --out "$OUT/$s.json" --svg "$OUT/$s.svg")
    note="server on CPU $SERVER_CPU, generator on CPU $GEN_CPU; before: $(machine_load)"
    log "$s: $note"
    rc=0
    case $s in
        idle)
            loadtest run --scenario idle --conns "${IDLE_CONNS:-15000}" --hold 10 "${common[@]}" --note "$note" ;;
        storm)
            loadtest run --scenario storm --conns "${STORM_CONNS:-10000}" --connect-concurrency 2000 "${common[@]}" --note "$note" ;;
        hot-room)
            loadtest run --scenario hot-room --conns 5000 --senders 10 --rates "${HOT_RATES:-10,20,30,40}" "${common[@]}" \
                --note "$note${TRACE_RATIO:+; tracing at $TRACE_RATIO}" ;;
        many-rooms)
            loadtest run --scenario many-rooms --conns 10000 --room-size 5 --rates "${MANY_RATES:-1000,2000,5000,10000}" \
                ${PRIVATE_ROOMS:+--private-rooms --db-url "$PG_BASE/$DB"} "${common[@]}" \
                --note "$note${PRIVATE_ROOMS:+; private rooms}${CHATTY_WEBHOOKS_URL:+; webhooks to a black hole}${TRACE_RATIO:+; tracing at $TRACE_RATIO}" ;;
        durable)
            loadtest run --scenario durable --conns 200 --rates "${DURABLE_RATES:-1000,2000,5000,10000,30000}" \
                --db-url "$PG_BASE/$DB" --copy-compare "${common[@]}" --note "$note" ;;
        slow-consumers)
            loadtest run --scenario slow-consumers --conns 1000 --senders 10 --body-bytes 3000 \
                --slow-fraction 0.01 --rates "${SLOW_RATES:-40}" "${common[@]}" --note "$note" ;;
        mixed)
            loadtest run --scenario mixed --conns 10000 --hot-members 1000 --hot-share 0.1 \
                --rates "${MIXED_RATES:-500,1000,2000}" "${common[@]}" --note "$note" ;;
    esac | tee "$OUT/$s.table.md" || rc=$?
    record "$s" "$rc"
    stop_server
    sleep 2
done
log "results in $OUT"
if [ ${#FAILED[@]} -gt 0 ] || [ ${#INVALID[@]} -gt 0 ]; then
    [ ${#INVALID[@]} -eq 0 ] || log "INVALID (not results): ${INVALID[*]}"
    [ ${#FAILED[@]} -eq 0 ] || log "FAILED: ${FAILED[*]}"
    [ ${#FAILED[@]} -gt 0 ] && exit 1
    exit 3
fi
