#!/usr/bin/env bash
# Retention soak: three brokers on loopback, a steady open-loop produce load for
# DURATION seconds, and one node stopped for STOP_FOR seconds (long enough for
# retention to pass its log end several times) and restarted, so it must catch up
# through an InstallSnapshot while the load goes on. Every SAMPLE seconds the disk
# use of each node's data directory (allocated bytes: segments are preallocated)
# goes to a CSV; at the end the script prints the maxima, retention and snapshot
# counts from the logs, and checks that the three nodes converged.
#
# Usage: benches/scripts/retention-soak.sh
# Env (defaults in brackets): DURATION [3600] RATE msg/s [5000] SIZE bytes [1000]
#      SEGMENT bytes [16 MiB] RETENTION bytes [128 MiB] STOP_AT s [600]
#      STOP_FOR s [600] GRACE_MS [60000] SAMPLE s [10] OUT dir [target/retention-soak]
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-3600}
RATE=${RATE:-5000}
SIZE=${SIZE:-1000}
SEGMENT=${SEGMENT:-16777216}
RETENTION=${RETENTION:-134217728}
STOP_AT=${STOP_AT:-600}
STOP_FOR=${STOP_FOR:-600}
GRACE_MS=${GRACE_MS:-60000}
SAMPLE=${SAMPLE:-10}
OUT=${OUT:-target/retention-soak}
BIN=target/release

cargo build --release -q -p raftmq-broker -p raftmq-benches -p raftmq-client
rm -rf "$OUT"
mkdir -p "$OUT"
DATA=$(mktemp -d)
PORTS=(0 $((27000 + RANDOM % 2000)) 0 0)
PORTS[2]=$((PORTS[1] + 1))
PORTS[3]=$((PORTS[1] + 2))
PEERS="1=127.0.0.1:${PORTS[1]},2=127.0.0.1:${PORTS[2]},3=127.0.0.1:${PORTS[3]}"
BROKERS="127.0.0.1:${PORTS[1]},127.0.0.1:${PORTS[2]},127.0.0.1:${PORTS[3]}"
declare -A PID

start() {
  "$BIN/raftmq-broker" --node-id "$1" --data-dir "$DATA/n$1" \
    --listen "127.0.0.1:${PORTS[$1]}" --peers "$PEERS" \
    --segment-bytes "$SEGMENT" --max-batch-bytes 1048576 --retention-bytes "$RETENTION" \
    --retention-check-interval-ms 1000 --retention-follower-grace-ms "$GRACE_MS" \
    >>"$OUT/n$1.log" 2>&1 &
  PID[$1]=$!
}

cleanup() {
  for p in "${PID[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "${SAMPLER:-}" ] && kill "$SAMPLER" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

for i in 1 2 3; do start "$i"; done
sleep 2
for i in 1 2 3; do
  kill -0 "${PID[$i]}" 2>/dev/null || { echo "node $i did not start:"; tail -3 "$OUT/n$i.log"; exit 1; }
done

# Disk use per node (allocated bytes of the whole data dir), every SAMPLE seconds.
(
  echo "seconds,n1_bytes,n2_bytes,n3_bytes,n1_segments,n2_segments,n3_segments"
  t0=$(date +%s)
  while true; do
    row="$(( $(date +%s) - t0 ))"
    segs=""
    for i in 1 2 3; do
      row="$row,$(du -s --block-size=1 "$DATA/n$i" 2>/dev/null | cut -f1)"
      segs="$segs,$(find "$DATA/n$i/log" -name '*.log' 2>/dev/null | wc -l)"
    done
    echo "$row$segs"
    sleep "$SAMPLE"
  done
) >"$OUT/disk.csv" &
SAMPLER=$!

"$BIN/raftmq-bench" --brokers "$BROKERS" --mode produce --queues 4 \
  --rate "$RATE" --duration "$DURATION" --message-size "$SIZE" --warmup 0 --json \
  >"$OUT/bench.json" 2>"$OUT/bench.err" &
BENCH=$!

sleep "$STOP_AT"
echo "t=${STOP_AT}s: stopping node 3 (SIGKILL) for ${STOP_FOR}s"
kill -9 "${PID[3]}"
sleep "$STOP_FOR"
echo "t=$((STOP_AT + STOP_FOR))s: restarting node 3"
start 3

wait "$BENCH" || { echo "benchmark failed:"; tail -5 "$OUT/bench.err"; exit 1; }
sleep 5
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=""

echo
echo "== load"
cat "$OUT/bench.json"
echo
echo "== disk use per node (allocated bytes of the data dir)"
awk -F, -v seg="$SEGMENT" -v ret="$RETENTION" 'NR > 1 && $2 != "" {
    for (i = 2; i <= 4; i++) { if ($i > max[i]) max[i] = $i; last[i] = $i }
    for (i = 5; i <= 7; i++) { if ($i > maxs[i]) maxs[i] = $i }
    n++
  }
  END {
    printf "samples %d; retention_bytes %d + one active segment = %d\n", n, ret, ret + seg
    for (i = 2; i <= 4; i++)
      printf "n%d: max %.1f MiB (%d segments at most), at the end %.1f MiB\n",
        i - 1, max[i] / 1048576, maxs[i + 3], last[i] / 1048576
  }' "$OUT/disk.csv"
echo
echo "== events"
for i in 1 2 3; do
  printf "n%d: retention runs that deleted segments: %d, snapshots sent: %d, installed: %d\n" "$i" \
    "$(grep -c 'retention deleted old segments' "$OUT/n$i.log" || true)" \
    "$(grep -c 'sending a snapshot' "$OUT/n$i.log" || true)" \
    "$(grep -c "installed the leader's snapshot" "$OUT/n$i.log" || true)"
done
echo
echo "== final state"
for i in 1 2 3; do
  "$BIN/raftmq" --brokers "127.0.0.1:${PORTS[$i]}" cluster status 2>&1 | head -3 | sed "s/^/n$i: /"
done
