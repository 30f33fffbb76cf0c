#!/usr/bin/env bash
# Start N Chatty nodes on loopback against the local PostgreSQL and Redis (cluster mode), for
# development and for the load harness. Ctrl-C (or SIGTERM) stops them all gracefully.
#
#   scripts/cluster.sh [N]           # default 3 nodes
#
# Node i listens on 127.0.0.1:$((BASE_PORT + i)) (sockets, API, page) and metrics on
# $((METRICS_BASE + i)). Environment:
#   CHATTY_CLUSTER_DATABASE_URL  default postgres://postgres@127.0.0.1:5432/chatty_cluster
#   CHATTY_CLUSTER_REDIS_URL     default redis://127.0.0.1:6379
#   BASE_PORT (8081), METRICS_BASE (9181), PROFILE (release)
#   Any CHATTY__SECTION__KEY setting is passed through to every node.
set -euo pipefail
cd "$(dirname "$0")/.."

n=${1:-3}
db=${CHATTY_CLUSTER_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/chatty_cluster}
redis=${CHATTY_CLUSTER_REDIS_URL:-redis://127.0.0.1:6379}
base=${BASE_PORT:-8081}
metrics=${METRICS_BASE:-9181}
profile=${PROFILE:-release}

cargo build --profile "$profile" -p chatty --quiet
bin=target/$profile/chatty
[ "$profile" = dev ] && bin=target/debug/chatty

# Migrate once, before the nodes start together.
CHATTY__DATABASE__URL=$db "$bin" migrate

pids=()
stop() {
  echo "stopping ${#pids[@]} nodes"
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM EXIT

origins=""
for i in $(seq 0 $((n - 1))); do
  origins+="http://127.0.0.1:$((base + i)),http://localhost:$((base + i)),"
done
for i in $(seq 0 $((n - 1))); do
  CHATTY__DATABASE__URL=$db \
  CHATTY__DATABASE__MIGRATE_ON_START=false \
  CHATTY__REDIS__URL=$redis \
  CHATTY__NODE__ID="local-$i" \
  CHATTY__SERVER__PORT=$((base + i)) \
  CHATTY__SERVER__METRICS_PORT=$((metrics + i)) \
  CHATTY__AUTH__ALLOWED_ORIGINS=${CHATTY__AUTH__ALLOWED_ORIGINS:-${origins%,}} \
    "$bin" serve &
  pids+=($!)
  echo "node local-$i: http://127.0.0.1:$((base + i))/ (metrics :$((metrics + i)), pid $!)"
done
wait
