#!/usr/bin/env bash
# CPU and memory of an idle cluster with many data groups: starts 3 release
# brokers on loopback with N data groups, waits for start-up, then samples the
# brokers' CPU (utime + stime from /proc) over a window, as % of one core.
#
#   benches/scripts/idle-groups.sh [NGROUPS] [WAIT_S] [SAMPLE_S] [extra broker args...]
#   e.g. benches/scripts/idle-groups.sh 1000 45 20 --no-quiesce
set -euo pipefail
NGROUPS=${1:-1000}
WAIT_S=${2:-45}
SAMPLE_S=${3:-20}
shift $(( $# < 3 ? $# : 3 ))
BIN=${BIN:-target/release/raftmq-broker}
DIR=$(mktemp -d /tmp/raftmq-idle.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
BASE=${BASE_PORT:-17301}
PEERS="1=127.0.0.1:$BASE,2=127.0.0.1:$((BASE + 1)),3=127.0.0.1:$((BASE + 2))"
for n in 1 2 3; do
    "$BIN" --node-id "$n" --listen "127.0.0.1:$((BASE + n - 1))" --peers "$PEERS" \
        --data-dir "$DIR/n$n" --data-groups "$NGROUPS" --segment-bytes 2097152 \
        --max-batch-bytes 1048576 "$@" >"$DIR/n$n.log" 2>&1 &
    PIDS+=($!)
done
sleep "$WAIT_S"
ticks() {
    local total=0
    for p in "${PIDS[@]}"; do
        read -r -a f <"/proc/$p/stat"
        total=$((total + f[13] + f[14]))
    done
    echo "$total"
}
HZ=$(getconf CLK_TCK)
t0=$(ticks)
sleep "$SAMPLE_S"
t1=$(ticks)
rss=0
for p in "${PIDS[@]}"; do
    r=$(awk '/RssAnon/ {print $2}' "/proc/$p/status")
    rss=$((rss + r))
done
awk -v d=$((t1 - t0)) -v hz="$HZ" -v s="$SAMPLE_S" -v rss="$rss" -v g="$NGROUPS" -v args="$*" \
    'BEGIN { printf "groups %d args [%s]: CPU %.1f %% of one core, RssAnon %.1f MiB per broker\n", g, args, 100 * d / hz / s, rss / 3 / 1024 }'
