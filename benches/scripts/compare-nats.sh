#!/usr/bin/env bash
# Side by side with NATS JetStream R3 (3 nodes, file storage) on this machine:
# per-message acknowledgements with WINDOW in flight, 100-byte messages, alternating
# NATS and raftmq REPS times so machine drift hits both alike.
#
# Needs: nats-server on PATH and the `peerbench` load generator (a NATS/Redis client
# harness) with its NATS cluster configs; point at them with
#   PEERBENCH_BIN=/path/to/peerbench NATS_CONF_DIR=/path/to/nats-configs
# The configs are three nodes with client ports 4231-4233 and http 8231-8233.
# Usage: benches/scripts/compare-nats.sh [REPS]      (default 3)
# Env:   WINDOW (256), COUNT (200000), LINGER_MS (raftmq producer linger, 1)
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${1:-3}
WINDOW=${WINDOW:-256}
COUNT=${COUNT:-200000}
OUT=${OUT:-target/compare-nats.txt}
: "${PEERBENCH_BIN:?set PEERBENCH_BIN}"
: "${NATS_CONF_DIR:?set NATS_CONF_DIR}"
cargo build --release -q -p raftmq-broker -p raftmq-benches
: > "$OUT"

PIDS=()
stop_nats() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap stop_nats EXIT

for rep in $(seq 1 "$REPS"); do
  for i in 1 2 3; do
    dir=$(sed -n 's/^ *store_dir: *//p' "$NATS_CONF_DIR/cluster-n$i.conf")
    rm -rf "$dir"
    nats-server -c "$NATS_CONF_DIR/cluster-n$i.conf" -l "/dev/null" &
    PIDS+=($!)
  done
  for port in 8231 8232 8233; do
    for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
  done
  echo "== nats-r3 window $WINDOW ($rep/$REPS)" >&2
  timeout 200 "$PEERBENCH_BIN" --target nats --url nats://127.0.0.1:4231 --replicas 3 \
    --mode pub --size 100 --count "$COUNT" --window "$WINDOW" --max-secs 180 \
    --server-pids "$(IFS=,; echo "${PIDS[*]}")" --label nats-r3 | tee -a "$OUT"
  stop_nats
  for durability in async fsync; do
    echo "== raftmq 3 nodes $durability window $WINDOW ($rep/$REPS)" >&2
    timeout 200 target/release/raftmq-bench --local-cluster 3 --durability "$durability" \
      --window "$WINDOW" --count "$COUNT" --linger-ms "${LINGER_MS:-1}" --json \
      | python3 -c 'import json,sys; r=json.load(sys.stdin); l=r["latency"]; print("RESULT target=raftmq-%s msgs_per_s=%.0f p50_us=%d p99_us=%d cpu_us_per_msg=%.2f" % (sys.argv[1], r["messages_per_second"], l["p50_us"], l["p99_us"], r["cpu_us_per_message"]))' "$durability" \
      | tee -a "$OUT"
  done
done
