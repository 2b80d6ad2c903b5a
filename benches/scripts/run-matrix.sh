#!/usr/bin/env bash
# Runs the performance matrix of docs/performance.md REPS times (cases interleaved,
# so drift on a shared machine spreads over all of them) and prints a Markdown table
# of medians with [min–max]. Every case starts its own local cluster and stops it.
#
# Usage: benches/scripts/run-matrix.sh [REPS]      (default 3)
# Env:   CASES (a subset of case names, space-separated), OUT (raw JSON lines file)
set -euo pipefail
cd "$(dirname "$0")/../.."

REPS=${1:-3}
OUT=${OUT:-target/bench-matrix.jsonl}
BENCH=target/release/raftmq-bench
cargo build --release -q -p raftmq-broker -p raftmq-benches
: > "$OUT"

declare -A CASE=(
  [produce-3n-100B]="--local-cluster 3 --count 3000000"
  [produce-3n-1KiB]="--local-cluster 3 --message-size 1024 --count 500000"
  [consume-3n-100B]="--local-cluster 3 --mode consume --count 3000000"
  [sync-3n]="--local-cluster 3 --mode sync --count 3000"
  [openloop-3n-half]="--local-cluster 3 --rate 1000000 --duration 5"
  [window256-3n-async]="--local-cluster 3 --durability async --window 256 --count 1000000"
  [window256-3n-fsync]="--local-cluster 3 --window 256 --count 1000000"
  [produce-1n-100B]="--local-cluster 1 --count 3000000"
)
ORDER=${CASES:-"produce-3n-100B produce-3n-1KiB consume-3n-100B sync-3n openloop-3n-half window256-3n-async window256-3n-fsync produce-1n-100B"}

for rep in $(seq 1 "$REPS"); do
  for name in $ORDER; do
    echo "== $name ($rep/$REPS)" >&2
    # shellcheck disable=SC2086
    timeout 300 "$BENCH" ${CASE[$name]} --json \
      | python3 -c 'import json,sys; r=json.load(sys.stdin); r["case"]=sys.argv[1]; print(json.dumps(r))' "$name" \
      >> "$OUT"
  done
done

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["case"], []).append(r)
def cell(vals, fmt):
    m = statistics.median(vals)
    return f"{fmt(m)} [{fmt(min(vals))}–{fmt(max(vals))}]"
print("| case | n | msgs/s | MB/s | p50 µs | p99 µs | CPU µs/msg (all) | broker RssAnon MiB |")
print("|---|---|---|---|---|---|---|---|")
for case, rs in rows.items():
    lat = [r["latency"] for r in rs if r.get("latency")]
    p50 = cell([l["p50_us"] for l in lat], lambda v: f"{v:,.0f}") if lat else "-"
    p99 = cell([l["p99_us"] for l in lat], lambda v: f"{v:,.0f}") if lat else "-"
    rss = max((r.get("server_rss_anon_kib_max") or 0) for r in rs) / 1024
    print(f"| {case} | {len(rs)} | {cell([r['messages_per_second'] for r in rs], lambda v: f'{v:,.0f}')} "
          f"| {cell([r['mb_per_second'] for r in rs], lambda v: f'{v:.1f}')} | {p50} | {p99} "
          f"| {cell([r['cpu_us_per_message'] for r in rs], lambda v: f'{v:.2f}')} | {rss:.0f} |")
PY
