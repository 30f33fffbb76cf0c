#!/usr/bin/env bash
# The side-by-side comparison: the same hot-room sweep, from the same generator, against Chatty
# (persistence on, PostgreSQL), the bare broadcast ceiling, nats-server (WebSocket listener) and
# Socket.IO 4. Each server is pinned to SERVER_CPU, the generator to GEN_CPU.
#
#   loadtests/peers/run-comparison.sh [OUT_DIR]
#
# Settings (environment): TARGETS ("chatty bare nats socketio"), CONNS (5000 members),
# RATES (messages/s into the room, "5,10,20,30,40"), DURATION (15 s measured per rate),
# WARMUP (3 s), DRAIN (5 s), SENDERS (10), BODY_BYTES (64), plus those of lib.sh.
# Results: OUT_DIR/<target>.json, combined.json, table.md, hot-room.svg.
# A target whose run is INVALID (generator exit 3: connections refused or closed mid-run, a
# saturated generator) or fails is recorded and the others still run; the combined report
# shows INVALID steps as such, and the script exits non-zero (3: only INVALID, 1: a failure).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OUT="${1:-$LT_DIR/results/comparison-$(date -u +%Y%m%dT%H%M%SZ)}"
TARGETS="${TARGETS:-chatty bare nats socketio}"
CONNS="${CONNS:-5000}"
RATES="${RATES:-5,10,20,30,40}"
DURATION="${DURATION:-15}"
WARMUP="${WARMUP:-3}"
DRAIN="${DRAIN:-5}"
SENDERS="${SENDERS:-10}"
BODY_BYTES="${BODY_BYTES:-64}"
mkdir -p "$OUT"
trap stop_server EXIT

build_loadtest
[ -x "$CHATTY_BIN" ] || (cd "$REPO_DIR" && cargo build --release --locked -q)

inputs=()
INVALID=()
FAILED=()
for t in $TARGETS; do
    SERVER_LOG="$OUT/$t.server.log"
    extra=()
    case $t in
        chatty)
            start_chatty 18080 19090 "chatty_bench_cmp"
            url=ws://127.0.0.1:18080/ws
            extra=(--metrics-url http://127.0.0.1:19090/metrics --extra-cpu-comm postgres) ;;
        bare)     start_bare 18090;      url=ws://127.0.0.1:18090/ ;;
        nats)     start_nats;            url=ws://127.0.0.1:8092/ ;;
        socketio) start_socketio 18091;  url=ws://127.0.0.1:18091/ ;;
        *) log "unknown target $t"; exit 2 ;;
    esac
    note="server on CPU $SERVER_CPU, generator on CPU $GEN_CPU; before: $(machine_load)"
    log "$t: $note"
    rc=0
    loadtest run --scenario hot-room --target "$t" --url "$url" --conns "$CONNS" \
        --rates "$RATES" --duration "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
        --senders "$SENDERS" --body-bytes "$BODY_BYTES" --server-pid "$SERVER_PID" \
        "${extra[@]}" --note "$note" --out "$OUT/$t.json" --svg "$OUT/$t.svg" \
        | tee "$OUT/$t.table.md" || rc=$?
    case $rc in
        0) ;;
        3) INVALID+=("$t"); log "$t: INVALID, not a result" ;;
        *) FAILED+=("$t"); log "$t: failed with status $rc" ;;
    esac
    stop_server
    if [ -f "$OUT/$t.json" ]; then inputs+=("$OUT/$t.json"); fi
    sleep 2
done

"$LOADTEST" report "${inputs[@]}" --json "$OUT/combined.json" --md "$OUT/table.md" \
    --svg "$OUT/hot-room.svg" --p99-limit-ms 100,250,1000 \
    --title "hot room: 1 room x $CONNS members, latency against offered load"
log "results in $OUT"
if [ ${#FAILED[@]} -gt 0 ] || [ ${#INVALID[@]} -gt 0 ]; then
    [ ${#INVALID[@]} -eq 0 ] || log "INVALID (not results): ${INVALID[*]}"
    [ ${#FAILED[@]} -eq 0 ] || log "FAILED: ${FAILED[*]}"
    [ ${#FAILED[@]} -gt 0 ] && exit 1
    exit 3
fi
